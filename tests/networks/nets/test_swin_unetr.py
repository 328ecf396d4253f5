"""Tests of MONAI's SwinUNETR with swapped window attention."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR

from kvmonai.networks.blocks import KVWindowAttention
from kvmonai.networks.nets.swin_unetr import PRESETS, KVSwinUNETR


def _n(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_kv_window_attention_everywhere():
    net = KVSwinUNETR(1, 3, 64, **PRESETS["tiny"], attention="kv")
    attn = [m for m in net.modules() if isinstance(m, KVWindowAttention)]
    assert len(attn) == sum(PRESETS["tiny"]["depths"]) and all(a.attention == "kv" for a in attn)
    assert all(a.relative_position_bias_table.requires_grad for a in attn)  # kept in the KV variant
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_qkv_matches_monai_and_kv_saves_query():
    torch.manual_seed(0)
    ref = SwinUNETR(3, 3, spatial_dims=2, **PRESETS["tiny"])
    ours = KVSwinUNETR(3, 3, 64, **PRESETS["tiny"], attention="qkv")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))
    kv = KVSwinUNETR(3, 3, 64, **PRESETS["tiny"], attention="kv")
    dims = [PRESETS["tiny"]["feature_size"] * 2**i for i in range(4)]
    assert _n(ours) - _n(kv) == sum(d * d + d for d in dims)  # one layer per stage in the tiny preset


def test_kvpos_is_refused_with_reason():
    with pytest.raises(ValueError, match="relative position bias is kept"):
        KVSwinUNETR(1, 3, 64, **PRESETS["tiny"], attention="kvpos")
    with pytest.raises(ValueError, match="divisible by 32"):
        KVSwinUNETR(1, 3, 48, **PRESETS["tiny"])
