"""Tests of SETR with its three decoders."""

from __future__ import annotations

import pytest
import torch

from kvmonai.networks.nets.setr import PRESETS, SETR

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
@pytest.mark.parametrize("in_channels", [1, 3, 5])
def test_shapes(decoder, in_channels):
    layers = 4 if decoder == "mla" else TINY["num_layers"]
    net = SETR(in_channels, 3, (64, 48), **{**TINY, "decoder": decoder, "num_layers": layers}, attention="kv")
    assert net(torch.randn(2, in_channels, 64, 48)).shape == (2, 3, 64, 48)


@pytest.mark.parametrize(
    ("decoder", "qkv", "kv"),
    [("pup", 89_341_443, 82_254_339), ("naive", 85_996_803, 78_909_699)],
)
def test_paper_parameter_counts(decoder, qkv, kv):
    """ViT-B/16 at 224, 3 input channels, 3 classes: the reference layout's counts."""
    counts = {}
    for attention in ("qkv", "kv", "kvpos"):
        net = SETR(3, 3, 224, **{**PRESETS["paper"], "decoder": decoder}, attention=attention)
        counts[attention] = sum(p.numel() for p in net.parameters())
    assert counts["qkv"] == qkv
    assert counts["kv"] == kv
    assert counts["kvpos"] == kv + 12 * 51


def test_without_cls_token():
    with_cls = SETR(3, 3, 32, **TINY)
    without = SETR(3, 3, 32, **TINY, cls_token=False)
    hidden = TINY["hidden_size"]
    assert sum(p.numel() for p in with_cls.parameters()) - sum(p.numel() for p in without.parameters()) == 2 * hidden
    assert without(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "q"}, "attention must be one of"),
        ({"decoder": "fpn"}, "decoder must be one of"),
        ({"img_size": 30}, "divisible by patch_size"),
        ({"decoder": "pup", "patch_size": 6, "img_size": 36}, "power-of-two"),
        ({"decoder": "mla", "num_layers": 3}, "divisible by 4"),
        ({"in_channels": 0}, "must be positive"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"in_channels": 3, "out_channels": 3, "img_size": 32, **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        SETR(**args)


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_script_export(decoder):
    net = SETR(3, 3, 32, **{**TINY, "decoder": decoder, "num_layers": 4}, attention="kvpos").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))
