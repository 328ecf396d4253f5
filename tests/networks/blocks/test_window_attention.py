"""Window attention: the converted QKV and KV modules compute what MONAI's weights say, with Q := K for KV."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention

from kvmonai.networks.blocks import KVWindowAttention, convert_window_attention

DIM, HEADS, WINDOW = 16, 4, (4, 4)


def _monai_block() -> WindowAttention:
    torch.manual_seed(0)
    block = WindowAttention(DIM, HEADS, WINDOW, qkv_bias=True).eval()
    with torch.no_grad():  # a trained-looking relative position bias, not MONAI's near-zero initialisation
        block.relative_position_bias_table.normal_(0, 0.5)
    return block


def _reference(block: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None, q_from_k: bool) -> torch.Tensor:
    """Softmax attention written out from MONAI's weights: fused qkv rows (Q, K, V), relative bias, window mask."""
    b, n, c = x.shape
    d = c // HEADS
    qkv = (x @ block.qkv.weight.T + block.qkv.bias).reshape(b, n, 3, HEADS, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if q_from_k:
        q = k
    logits = q @ k.transpose(-1, -2) * d**-0.5
    index = block.relative_position_index[:n, :n].reshape(-1)
    logits = logits + block.relative_position_bias_table[index].reshape(n, n, HEADS).permute(2, 0, 1)[None]
    if mask is not None:
        nw = mask.shape[0]
        logits = logits.view(b // nw, nw, HEADS, n, n) + mask[None, :, None]
        logits = logits.view(b, HEADS, n, n)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return out @ block.proj.weight.T + block.proj.bias


@pytest.mark.parametrize("attention", ["qkv", "kv"])
@pytest.mark.parametrize("shifted", [False, True])
def test_converted_window_attention_matches_reference(attention, shifted):
    block = _monai_block()
    n = WINDOW[0] * WINDOW[1]
    windows = 3
    x = torch.randn(2 * windows, n, DIM)
    mask = None
    if shifted:  # MONAI's shifted-window mask: 0 inside a region, -100 across regions
        regions = torch.randint(0, 2, (windows, n))
        mask = (regions[:, :, None] != regions[:, None, :]).float() * -100.0
    new = convert_window_attention(block, attention).eval()
    assert isinstance(new, KVWindowAttention) and new.attention == attention
    with torch.no_grad():
        got = new(x, mask)
        expected = _reference(block, x, mask, q_from_k=attention == "kv")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if attention == "qkv":  # and MONAI's own forward agrees
        with torch.no_grad():
            torch.testing.assert_close(got, block(x, mask), rtol=1e-5, atol=1e-5)


def test_kv_keeps_monai_key_value_and_position_weights():
    block = _monai_block()
    new = convert_window_attention(block, "kv")
    torch.testing.assert_close(new.kv.weight, block.qkv.weight[DIM:])
    torch.testing.assert_close(new.kv.bias, block.qkv.bias[DIM:])
    torch.testing.assert_close(new.proj.weight, block.proj.weight)
    torch.testing.assert_close(new.relative_position_bias_table, block.relative_position_bias_table)
    removed = sum(p.numel() for p in block.parameters()) - sum(p.numel() for p in new.parameters())
    assert removed == DIM * DIM + DIM  # the query rows of the fused projection and their bias


def test_kv_back_to_kv_is_identity():
    block = convert_window_attention(_monai_block(), "kv").eval()
    again = convert_window_attention(block, "kv").eval()
    x = torch.randn(2, WINDOW[0] * WINDOW[1], DIM)
    with torch.no_grad():
        torch.testing.assert_close(again(x, None), block(x, None))
