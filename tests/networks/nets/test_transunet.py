"""Tests of TransUNet (R50-ViT-B/16 hybrid) with QKV, KV and KV+Pos attention."""

from __future__ import annotations

import pytest
import torch

from kvmonai.networks.blocks import KVSelfAttention, KVTransformerBlock
from kvmonai.networks.nets.transunet import PRESETS, StdConv2d, TransUNet

TINY = PRESETS["tiny"]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("attention", ["qkv", "kv", "kvpos"])
@pytest.mark.parametrize("in_channels", [1, 3, 5])
def test_shapes(attention, in_channels):
    net = TransUNet(in_channels, 3, (64, 48), attention=attention, **TINY)
    assert net(torch.randn(2, in_channels, 64, 48)).shape == (2, 3, 64, 48)
    attn = [m for m in net.modules() if isinstance(m, KVSelfAttention)]
    assert len(attn) == TINY["num_layers"] and all(a.attention == attention for a in attn)
    assert all(b.norm1.eps == 1e-6 and b.norm2.eps == 1e-6 for b in net.blocks)


def test_paper_parameter_counts():
    """R50-ViT-B/16 at 224 with 3 input channels and 3 classes: the reference layout's exact counts."""
    counts, parts = {}, {}
    with torch.device("meta"):  # no memory or initialisation needed for counting
        for attention in ("qkv", "kv", "kvpos"):
            net = TransUNet(3, 3, 224, attention=attention, **PRESETS["paper"])
            counts[attention] = _count(net)
            parts[attention] = {name: _count(child) for name, child in net.named_children()}
    assert counts["qkv"] == 105_276_211
    assert counts["kv"] == 98_189_107
    assert counts["kvpos"] == counts["kv"] + 12 * 51
    # breakdown of the reference: ResNet, patch embedding + position embeddings, transformer, decoder
    qkv = parts["qkv"]
    assert qkv["resnet"] == 11_894_848
    assert qkv["patch_embedding"] == 787_200 + 196 * 768
    assert qkv["blocks"] + qkv["encoder_norm"] == 85_056_000
    assert qkv["conv_more"] + qkv["decoder"] + qkv["segmentation_head"] == 7_387_635


def test_tiny_parameter_deltas():
    counts = {a: _count(TransUNet(3, 3, 32, attention=a, **TINY)) for a in ("qkv", "kv", "kvpos")}
    d, layers = TINY["hidden_size"], TINY["num_layers"]
    assert counts["qkv"] - counts["kv"] == layers * (d * d + d)  # the query Linear of each layer
    assert counts["kvpos"] - counts["kv"] == layers * 51


def test_position_embeddings_follow_img_size():
    net = TransUNet(1, 2, (64, 96), **TINY)
    assert net.patch_embedding.position_embeddings.shape == (1, 4 * 6, TINY["hidden_size"])
    assert net(torch.randn(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_skip_connections():
    """n_skip=0 removes the skip input channels of the first three decoder blocks' first convolution."""
    full, none = TransUNet(3, 3, 32, **TINY), TransUNet(3, 3, 32, **{**TINY, "n_skip": 0})
    w, dec = TINY["resnet_width"], TINY["decoder_channels"]
    assert _count(full) - _count(none) == 9 * (8 * w * dec[0] + 4 * w * dec[1] + w * dec[2])
    assert none(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_reference_details():
    net = TransUNet(3, 3, 32, **{**TINY, "dropout_rate": 0.1})
    assert isinstance(net.resnet.root[0], StdConv2d) and net.resnet.root[0].bias is None
    assert all(isinstance(b, KVTransformerBlock) for b in net.blocks)
    # dropout 0.1 in the embeddings and MLPs, none on the attention (reference attention_dropout_rate = 0)
    assert net.patch_embedding.dropout.p == 0.1 and net.blocks[0].mlp.drop1.p == 0.1
    assert net.blocks[0].attn.dropout_rate == 0.0 and net.blocks[0].attn.drop_output.p == 0.0
    assert net.encoder_norm.eps == 1e-6


def test_weight_standardisation():
    conv = StdConv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_()  # unit-scale filters, so that the epsilon is negligible
    x = torch.randn(1, 3, 8, 8)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.5)  # affine changes of each filter are normalised away
    torch.testing.assert_close(conv(x), y, atol=1e-4, rtol=1e-4)


def test_deterministic_init(assert_same_init):
    assert_same_init(lambda: TransUNet(1, 3, 32, attention="kvpos", **TINY))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize("attention", ["qkv", "kvpos"])
def test_trace_round_trip(attention, assert_trace_round_trip):
    torch.manual_seed(0)
    net = TransUNet(1, 3, (32, 48), attention=attention, **TINY).eval()
    assert_trace_round_trip(net, torch.randn(2, 1, 32, 48))


@pytest.mark.parametrize("attention", ["qkv", "kv", "kvpos"])
def test_training_reduces_loss(attention, train_losses):
    torch.manual_seed(0)
    net = TransUNet(1, 2, 32, attention=attention, **TINY)
    x = torch.randn(4, 1, 32, 32)
    y = (x[:, 0] > 0.5).long()  # a learnable pixel-wise target
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = train_losses(net, x, y, torch.nn.functional.cross_entropy, opt, steps=12)
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "qk"}, "attention must be one of"),
        ({"img_size": 40}, "multiple of 16"),
        ({"img_size": (32, 24)}, "multiple of 16"),
        ({"in_channels": 0}, "must be positive"),
        ({"num_heads": 5}, "multiple of num_heads"),
        ({"decoder_channels": (16, 8, 8)}, "four positive"),
        ({"n_skip": 4}, "n_skip must be"),
        ({"resnet_units": (1, 1)}, "three positive"),
        ({"resnet_width": 10}, "multiple of resnet_groups"),
        ({"dropout_rate": 1.5}, "dropout_rate must be in"),
        ({"attention_dropout_rate": -0.1}, "attention_dropout_rate must be in"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"in_channels": 3, "out_channels": 3, "img_size": 32, **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        TransUNet(**args)
