"""Exact parameter and MAC accounting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvmonai.complexity import count_macs, count_parameters, kvpos_elementwise_ops
from kvmonai.networks import create
from kvmonai.networks.blocks import KVSelfAttention


def test_cpu_sdpa_is_counted():
    class Attn(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    b, h, n, d = 2, 4, 50, 16
    assert count_macs(Attn(), (b, h, n, d)) == 2 * b * h * n * n * d


def test_block_macs():
    n, d = 196, 768
    qkv = count_macs(KVSelfAttention(d, 12, qkv_bias=True, attention="qkv"), (1, n, d))
    kv = count_macs(KVSelfAttention(d, 12, qkv_bias=True, attention="kv"), (1, n, d))
    assert qkv == 4 * n * d * d + 2 * n * n * d
    assert qkv - kv == n * d * d


def test_backward_count():
    """Backward of a Linear costs 2x its forward (grad of weight and of input) but the input needs no gradient."""
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    fwd = count_macs(m, (5, 64))
    assert fwd == 5 * (64 * 32 + 32 * 8)
    both = count_macs(m, (5, 64), backward=True)
    assert both == fwd + 5 * (64 * 32 + 2 * 32 * 8)
    assert all(p.grad is None for p in m.parameters())


def _attention_geometry(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(layers L, width d, tokens n) of the KVSelfAttention layers of ``net``."""
    layers = [m for m in net.modules() if isinstance(m, KVSelfAttention)]
    seen: list[int] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1])) for m in layers]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    assert len(set(seen)) == 1 and len({m.inner_dim for m in layers}) == 1
    return len(layers), layers[0].inner_dim, seen[0]


@pytest.mark.parametrize("arch", ["setr", "transunet", "unetr"])
def test_exact_vit_accounting(arch):
    """qkv - kv: L (d^2 + d) parameters and L n d^2 MACs; kvpos - kv: L (m + 1) parameters."""
    size = 64
    shape = (1, 3, size, size)
    nets = {a: create(arch, a, "tiny", img_size=size) for a in ("qkv", "kv", "kvpos")}
    big_l, d, n = _attention_geometry(nets["kv"], torch.randn(shape))
    params = {a: count_parameters(m) for a, m in nets.items()}
    macs = {a: count_macs(m, shape) for a, m in nets.items()}
    assert params["qkv"] - params["kv"] == big_l * (d * d + d)
    assert macs["qkv"] - macs["kv"] == big_l * n * d * d
    assert params["kvpos"] - params["kv"] == big_l * 51
    assert macs["kvpos"] == macs["kv"]  # the positional terms are element-wise (reported separately)
    extra = kvpos_elementwise_ops(nets["kvpos"], n)
    heads = next(m for m in nets["kvpos"].modules() if isinstance(m, KVSelfAttention)).num_heads
    assert extra == big_l * (n * d + n * 24 + heads * n * n)


def test_bad_shape():
    with pytest.raises(ValueError, match="input_shape must be positive"):
        count_macs(torch.nn.Linear(2, 2), (0, 2))
