"""The autocast inferers: the training inferer runs the network in the chosen dtype and hands fp32 to the loss."""

from __future__ import annotations

import pytest
import torch

from kvmonai.inference import AutocastInferer, autocast_dtype
from kvmonai.networks import create


class _Recorder(torch.nn.Module):
    """A 1x1 convolution that records the dtype its weight sees (autocast casts inside the op)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y


def test_autocast_inferer_runs_bf16_and_returns_fp32():
    net = _Recorder()
    x = torch.randn(2, 3, 8, 8)
    out = AutocastInferer("bf16")(x, net)
    assert net.seen == [torch.bfloat16] and out.dtype == torch.float32
    out = AutocastInferer("fp32")(x, net)
    assert net.seen[-1] == torch.float32 and out.dtype == torch.float32
    out = AutocastInferer("fp32", channels_last=True)(x, net)
    assert out.shape == (2, 3, 8, 8)


def test_autocast_inferer_auto_follows_the_hardware():
    """``auto`` is bf16 only where the CPU runs it natively, so an AVX2-only CPU is never slowed by emulation."""
    assert AutocastInferer("auto").dtype("cpu") == autocast_dtype("auto", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        AutocastInferer("int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        AutocastInferer("fp16").dtype("cpu")


def test_bf16_gradients_follow_fp32():
    """One backward pass under bf16 autocast points the same way as in fp32 (cosine similarity of the gradients)."""
    torch.manual_seed(0)
    net = create("setr", "kv", "tiny", img_size=64)
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 3, 64, 64) > 0.8).float()
    grads = []
    for precision in ("fp32", "bf16"):
        net.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(AutocastInferer(precision)(x, net), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.95
