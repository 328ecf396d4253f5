"""Tests of the transformer block with selectable attention."""

from __future__ import annotations

import pytest
import torch

from kvmonai.networks.blocks import KVSelfAttention, KVTransformerBlock


@pytest.mark.parametrize("attention", ["qkv", "kv", "kvpos"])
def test_block_shapes_and_parameters(attention):
    block = KVTransformerBlock(768, 3072, 12, qkv_bias=True, attention=attention, layer_norm_eps=1e-6)
    assert isinstance(block.attn, KVSelfAttention) and block.attn.attention == attention
    assert block.norm1.eps == 1e-6
    # ViT-B/16 block: attention 4 (d^2 + d) (QKV), MLP 2 d 4d + 5 d, two LayerNorms 4 d
    d = 768
    expected = {"qkv": 4 * (d * d + d), "kv": 3 * (d * d + d), "kvpos": 3 * (d * d + d) + 51}[attention]
    expected += 2 * d * 4 * d + 4 * d + d + 4 * d
    assert sum(p.numel() for p in block.parameters()) == expected
    x = torch.randn(1, 5, 768)
    assert block(x).shape == x.shape


def test_block_rejects_bad_attention_before_building():
    with pytest.raises(ValueError, match="attention must be one of"):
        KVTransformerBlock(32, 64, 4, attention="nope")


def test_block_script():
    block = KVTransformerBlock(32, 64, 4, attention="kvpos").eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(torch.jit.script(block)(x), block(x))


def test_separate_attention_dropout():
    block = KVTransformerBlock(32, 64, 4, dropout_rate=0.1, attention_dropout_rate=0.0)
    assert block.attn.dropout_rate == 0.0 and block.attn.drop_output.p == 0.0
    assert block.mlp.drop1.p == 0.1
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        KVTransformerBlock(32, 64, 4, attention_dropout_rate=2.0)
