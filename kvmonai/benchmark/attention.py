"""Attention-block benchmark: QKV vs KV vs KV+Pos over the token count, forward and forward + backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvmonai.benchmark.timing import ResultRow, autocast, device_name, forward_call, ratio, time_interleaved

__all__ = ["DEFAULT_TOKENS", "AttentionResult", "benchmark_attention"]

#: token counts of the default sweep: 14^2 (ViT-B/16 at 224) up to 64^2 (a 1024 px image at patch 16)
DEFAULT_TOKENS: tuple[int, ...] = (196, 576, 1024, 2304, 4096)


@dataclass
class AttentionResult(ResultRow):
    """One variant at one token count. Times in ms; ratios paired against QKV (and KV) in the same rounds."""

    device: str
    tokens: int
    attention: str
    hidden_size: int
    num_heads: int
    batch: int
    params: int
    forward_ms: float
    forward_iqr_ms: float
    backward_ms: float
    backward_iqr_ms: float
    forward_vs_qkv: float
    backward_vs_qkv: float
    forward_vs_kv: float
    backward_vs_kv: float


def _fwd_bwd(block: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], object]:
    def run() -> object:
        block.zero_grad(set_to_none=True)
        with autocast(x.device, dtype):
            y = block(x.requires_grad_())
        y.float().sum().backward()
        return y

    return run


def benchmark_attention(
    tokens: Sequence[int] = DEFAULT_TOKENS,
    hidden_size: int = 768,
    num_heads: int = 12,
    batch: int = 1,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> list[AttentionResult]:
    """Time :class:`~kvmonai.networks.blocks.KVSelfAttention` in its three variants at each token count.

    The forward pass runs in eval mode (inference), forward + backward in training mode: KV+Pos takes a different
    SDPA route in each (see :func:`~kvmonai.networks.blocks.append_key_bias`).

    Args:
        tokens: token counts n.
        hidden_size: embedding size (768: ViT-B).
        num_heads: attention heads.
        batch: sequences per call.
        device: ``"cpu"`` or a CUDA device.
        repeats: timed rounds (the three variants interleaved in each).
        warmup: untimed rounds first.
        progress: show a tqdm progress bar.
        dtype: autocast dtype (``None``: fp32).

    Returns:
        one :class:`AttentionResult` per (n, variant).

    Raises:
        ValueError: if a token count is < 1.
    """
    from tqdm.auto import tqdm

    from kvmonai.complexity import count_parameters
    from kvmonai.networks.blocks import KVSelfAttention

    if any(n < 1 for n in tokens):
        raise ValueError(f"token counts must be >= 1, got {list(tokens)}.")
    variants = ("qkv", "kv", "kvpos")
    blocks = {}
    for att in variants:
        torch.manual_seed(0)
        blocks[att] = KVSelfAttention(hidden_size, num_heads, qkv_bias=True, attention=att).to(device)
    results: list[AttentionResult] = []
    for n in tqdm(tokens, unit="n", desc=f"attention {device}", disable=not progress):
        x = torch.randn(batch, n, hidden_size, device=device)
        for block in blocks.values():  # forward as at inference, forward + backward as in training
            block.eval()
        fwd = time_interleaved({a: forward_call(b, x, dtype) for a, b in blocks.items()}, repeats, warmup, device)
        for block in blocks.values():
            block.train()
        bwd = time_interleaved({a: _fwd_bwd(b, x.clone(), dtype) for a, b in blocks.items()}, repeats, warmup, device)
        for att, block in blocks.items():
            results.append(
                AttentionResult(
                    device=device_name(device),
                    tokens=n,
                    attention=att,
                    hidden_size=hidden_size,
                    num_heads=num_heads,
                    batch=batch,
                    params=count_parameters(block),
                    forward_ms=fwd[att].median,
                    forward_iqr_ms=fwd[att].iqr,
                    backward_ms=bwd[att].median,
                    backward_iqr_ms=bwd[att].iqr,
                    forward_vs_qkv=ratio(fwd[att], fwd["qkv"])[0],
                    backward_vs_qkv=ratio(bwd[att], bwd["qkv"])[0],
                    forward_vs_kv=ratio(fwd[att], fwd["kv"])[0],
                    backward_vs_kv=ratio(bwd[att], bwd["kv"])[0],
                )
            )
    return results
