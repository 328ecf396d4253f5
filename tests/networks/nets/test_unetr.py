"""Tests of MONAI's UNETR with swapped attention."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR

from kvmonai.networks.blocks import KVSelfAttention
from kvmonai.networks.nets.unetr import KVUNETR, PRESETS


def test_is_monai_unetr_with_kv_attention():
    net = KVUNETR(1, 3, 64, **PRESETS["tiny"], attention="kv")
    assert isinstance(net, UNETR)
    assert all(isinstance(b.attn, KVSelfAttention) and b.attn.attention == "kv" for b in net.vit.blocks)
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_qkv_matches_monai_layout():
    torch.manual_seed(0)
    ours = KVUNETR(3, 3, 64, **PRESETS["tiny"], attention="qkv")
    ref = UNETR(3, 3, (64, 64), **PRESETS["tiny"], spatial_dims=2, qkv_bias=True)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by 16"):
        KVUNETR(1, 3, 40, **PRESETS["tiny"])
    with pytest.raises(ValueError, match="attention must be one of"):
        KVUNETR(1, 3, 64, **PRESETS["tiny"], attention="x")
