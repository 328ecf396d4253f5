"""Tests of swapping attention variants inside existing MONAI module trees."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import SABlock, TransformerBlock
from monai.networks.nets import UNETR, ViT

from kvmonai.networks.blocks import KVSelfAttention, convert_attention, swap_attention


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _vit(spatial_dims: int) -> ViT:
    size = (16,) * spatial_dims
    patch = (8,) * spatial_dims
    return ViT(2, size, patch, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4, spatial_dims=spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("attention", ["qkv", "kv", "kvpos"])
def test_swap_in_vit_keeps_k_v_out(spatial_dims, attention):
    vit = _vit(spatial_dims).eval()
    old = [(b.attn.qkv.weight.detach().clone(), b.attn.out_proj.weight.detach().clone()) for b in vit.blocks]
    x = torch.randn(2, 2, *(16,) * spatial_dims)
    before = vit(x)[0]
    swap_attention(vit, attention)
    for block, (qkv_w, out_w) in zip(vit.blocks, old, strict=True):
        assert isinstance(block.attn, KVSelfAttention) and block.attn.attention == attention
        fused = block.attn.qkv if attention == "qkv" else block.attn.kv
        torch.testing.assert_close(fused.weight[-64:], qkv_w[-64:])  # K and V rows
        torch.testing.assert_close(block.attn.out_proj.weight, out_w)
    after = vit(x)[0]
    assert after.shape == before.shape
    if attention == "qkv":
        torch.testing.assert_close(after, before)
    else:
        assert not torch.allclose(after, before)  # the query is gone


def test_swap_in_unetr_and_back():
    net = UNETR(1, 3, (32, 32), feature_size=8, hidden_size=32, mlp_dim=64, num_heads=4, spatial_dims=2).eval()
    n_qkv = sum(p.numel() for p in net.parameters())
    swap_attention(net, "kv")
    assert n_qkv - sum(p.numel() for p in net.parameters()) == 12 * (32 * 32)  # qkv_bias=False in UNETR
    x = torch.randn(1, 1, 32, 32)
    kv_out = net(x)
    swap_attention(net, "qkv")  # the query is initialised from the key: same function
    torch.testing.assert_close(net(x), kv_out)


def test_convert_separate_projections_and_pos_kept():
    block = SABlock(32, 4, qkv_bias=True, use_combined_linear=False)
    kv = convert_attention(block, "kv")
    torch.testing.assert_close(kv.to_k.weight, block.to_k.weight)
    kvpos = convert_attention(kv, "kvpos", pos_channels=10)
    with torch.no_grad():
        kvpos.pos_proj.weight.normal_()
    again = convert_attention(kvpos, "kvpos")
    torch.testing.assert_close(again.pos_proj.weight, kvpos.pos_proj.weight)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(again(x), kvpos(x))


def test_swap_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        swap_attention(_vit(2), "q")
    with pytest.raises(ValueError, match="holds no SABlock, WindowAttention"):
        swap_attention(torch.nn.Linear(2, 2), "kv")
    with pytest.raises(TypeError, match="convert_attention"):
        swap_attention(SABlock(8, 2), "kv")
    with pytest.raises(TypeError, match="expects an SABlock"):
        convert_attention(torch.nn.Linear(2, 2), "kv")


def test_transformer_block_swap_trains(train_losses):
    block = TransformerBlock(32, 64, 4)
    swap_attention(block, "kvpos")
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    x, target = torch.randn(4, 10, 32), torch.randn(4, 10, 32)
    losses = train_losses(block, x, target, torch.nn.functional.mse_loss, opt, steps=5)
    assert losses[-1] < losses[0]
