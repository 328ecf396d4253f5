"""Tests of converting timm's attention modules to Borji's KV (and KV+Pos) attention.

The reference of every converted module is the ORIGINAL timm module, run with its query weights (and query bias,
query norm) overwritten by its key ones: with ``W_q := W_k`` timm computes exactly ``Q = K``. The query rows are
located here from each class's layout, written out independently of the converter.
"""

from __future__ import annotations

import copy
import importlib.util
from functools import partial

import pytest
import torch
from torch import nn

from kvmonai.complexity import count_macs
from kvmonai.networks.blocks import (
    KeyAsQuery,
    TimmKVAttention,
    TimmKVAttentionRope,
    TimmKVEfficientAttention,
    convert_timm_attention,
    swap_attention,
    unsupported_attention,
)

if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install 'kvmonai[timm]')", allow_module_level=True)
from kvmonai.networks.timm_import import import_timm  # noqa: E402

timm = import_timm()
from timm.models import cait, efficientformer, eva, fastvit, hiera, levit, maxxvit, nextvit  # noqa: E402
from timm.models import swin_transformer as swin1  # noqa: E402
from timm.models import swin_transformer_v2 as swin2  # noqa: E402

DIM = 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(module: nn.Module) -> nn.Module:
    """Random values in every parameter (biases, norms, position tables too), float64, eval mode."""
    module.double()
    module.eval()  # (LeViT's and EfficientFormer's train() return None)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stacked_q_from_k(weight: torch.Tensor) -> None:
    """``(3, heads, d)`` layout: rows ``[Q | K | V]``."""
    a = weight.shape[0] // 3
    weight[:a] = weight[a : 2 * a]


def _interleaved_q_from_k(weight: torch.Tensor, heads: int, key_dim: int) -> None:
    """Per-head ``[q_h | k_h | v_h]`` layout (MaxViT head-first, LeViT, EfficientFormer)."""
    w = weight.view(heads, weight.shape[0] // heads, *weight.shape[1:])
    w[:, :key_dim] = w[:, key_dim : 2 * key_dim]


def _ref_fused(block: nn.Module, interleaved: tuple[int, int] | None = None, proj: str = "qkv") -> nn.Module:
    """``block`` with its fused query rows (weight and bias) set to the key rows."""
    ref = copy.deepcopy(block)
    layer = getattr(ref, proj)
    layer = getattr(layer, "linear", layer)  # LeViT's LinearNorm / ConvNorm: the BN rows too
    tensors = [layer.weight, layer.bias]
    bn = getattr(getattr(ref, proj), "bn", None)
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    with torch.no_grad():
        for t in tensors:
            if t is None:
                continue
            if interleaved is None:
                _stacked_q_from_k(t)
            else:
                _interleaved_q_from_k(t, *interleaved)
        if getattr(ref, "q_bias", None) is not None:  # Swin v2 / EVA: the key bias is a zero buffer
            ref.q_bias.copy_(ref.k_bias)
        if isinstance(getattr(ref, "q_norm", None), nn.LayerNorm):
            ref.q_norm.load_state_dict(ref.k_norm.state_dict())
    return ref


def _window_mask(num_windows: int, n: int) -> torch.Tensor:
    return torch.where(torch.rand(num_windows, n, n) > 0.7, -100.0, 0.0).double()


# (id, module factory, input factory, forward kwargs factory, reference factory, parameter delta)
CASES = [
    (
        "vit_attention_qknorm",
        lambda: timm.layers.Attention(DIM, 2, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm),
        lambda: torch.randn(2, 5, DIM),
        lambda: {},
        _ref_fused,
        DIM * DIM + DIM + 2 * 8,  # Q weight, Q bias, q_norm (LayerNorm of head_dim 8)
    ),
    (
        "vit_attention_causal_gated",
        lambda: timm.layers.Attention(DIM, 4, qkv_bias=False, gated=True),
        lambda: torch.randn(2, 5, DIM),
        lambda: {"is_causal": True},
        _ref_fused,
        DIM * DIM,
    ),
    (
        "attention_rope_fused",
        lambda: timm.layers.AttentionRope(DIM, 2, qkv_bias=True, num_prefix_tokens=1),
        lambda: torch.randn(2, 5, DIM),
        lambda: {"rope": torch.randn(4, 2 * 8).double()},
        _ref_fused,
        DIM * DIM + DIM,
    ),
    (
        "attention_rope_gqa",
        lambda: timm.layers.AttentionRope(DIM, 4, qkv_fused=False, num_kv_heads=2, qkv_bias=True),
        lambda: torch.randn(2, 5, DIM),
        lambda: {
            "rope": torch.randn(4, 2 * 4).double(),
            "attn_mask": (torch.rand(5, 5) > 0.3) | torch.eye(5, dtype=torch.bool),
        },
        None,  # reference: q_proj := k_proj expanded over the groups (below)
        DIM * DIM + DIM,
    ),
    (
        "eva_fused",
        lambda: eva.EvaAttention(DIM, 2, qkv_bias=True, norm_layer=nn.LayerNorm),
        lambda: torch.randn(2, 5, DIM),
        lambda: {"rope": torch.randn(4, 2 * 8).double()},
        _ref_fused,
        DIM * DIM + DIM,  # q_bias, no k bias
    ),
    (
        "eva_separate",
        lambda: eva.EvaAttention(DIM, 2, qkv_bias=True, qkv_fused=False, norm_layer=nn.LayerNorm),
        lambda: torch.randn(2, 5, DIM),
        lambda: {},
        None,
        DIM * DIM + DIM,
    ),
    (
        "swin_v1",
        lambda: swin1.WindowAttention(DIM, 2, window_size=3),
        lambda: torch.randn(4, 9, DIM),
        lambda: {"mask": _window_mask(2, 9)},
        _ref_fused,
        DIM * DIM + DIM,
    ),
    (
        "swin_v2",
        lambda: swin2.WindowAttention(DIM, (3, 3), 2, qkv_bias=True),
        lambda: torch.randn(4, 9, DIM),
        lambda: {"mask": _window_mask(2, 9)},
        _ref_fused,
        DIM * DIM + DIM,  # q_bias (the k bias is a fixed zero buffer)
    ),
    (
        "nextvit_sr1",
        lambda: nextvit.EfficientAttention(DIM, head_dim=8, sr_ratio=1),
        lambda: torch.randn(2, 8, DIM),
        lambda: {},
        None,
        DIM * DIM + DIM,
    ),
    (
        "nextvit_sr2",
        lambda: nextvit.EfficientAttention(DIM, head_dim=8, sr_ratio=2),
        lambda: torch.randn(2, 8, DIM),
        lambda: {},
        None,
        DIM * DIM + DIM,
    ),
    (
        "cait_talking_heads",
        lambda: cait.TalkingHeadAttn(DIM, 2, qkv_bias=True),
        lambda: torch.randn(2, 5, DIM),
        lambda: {},
        _ref_fused,
        DIM * DIM + DIM,
    ),
    (
        "maxvit_cl_head_first",
        lambda: maxxvit.AttentionCl(DIM, dim_head=8, head_first=True),
        lambda: torch.randn(2, 3, 3, DIM),
        lambda: {"shared_rel_pos": torch.randn(2, 9, 9).double()},
        partial(_ref_fused, interleaved=(2, 8)),
        DIM * DIM + DIM,
    ),
    (
        "maxvit_cl_stacked",
        lambda: maxxvit.AttentionCl(DIM, dim_head=8, head_first=False),
        lambda: torch.randn(2, 3, 3, DIM),
        lambda: {},
        _ref_fused,
        DIM * DIM + DIM,
    ),
    (
        "maxvit_2d_head_first",
        lambda: maxxvit.Attention2d(DIM, dim_head=8, head_first=True),
        lambda: torch.randn(2, DIM, 3, 3),
        lambda: {},
        partial(_ref_fused, interleaved=(2, 8)),
        DIM * DIM + DIM,
    ),
    (
        "fastvit",
        lambda: fastvit.Attention(DIM, head_dim=8, qkv_bias=True),
        lambda: torch.randn(2, DIM, 2, 3),
        lambda: {},
        _ref_fused,
        DIM * DIM + DIM,
    ),
    (
        "efficientformer",
        lambda: efficientformer.Attention(DIM, key_dim=4, num_heads=2, attn_ratio=2, resolution=3),
        lambda: torch.randn(2, 9, DIM),
        lambda: {},
        partial(_ref_fused, interleaved=(2, 4)),
        2 * 4 * DIM + 2 * 4,
    ),
    (
        "levit_linear",
        lambda: levit.Attention(DIM, key_dim=4, num_heads=2, attn_ratio=2, resolution=3),
        lambda: torch.randn(2, 9, DIM),
        lambda: {},
        partial(_ref_fused, interleaved=(2, 4)),
        2 * 4 * DIM + 2 * (2 * 4),  # linear rows (no bias) + BN weight and bias of the query channels
    ),
    (
        "levit_conv",
        lambda: levit.Attention(DIM, key_dim=4, num_heads=2, attn_ratio=2, resolution=3, use_conv=True),
        lambda: torch.randn(2, DIM, 3, 3),
        lambda: {},
        partial(_ref_fused, interleaved=(2, 4)),
        2 * 4 * DIM + 2 * (2 * 4),
    ),
    (
        "hiera_mask_units_pooled",
        lambda: hiera.MaskUnitAttention(DIM, DIM, 2, q_stride=4, window_size=2, use_mask_unit_attn=True),
        lambda: torch.randn(2, 16, DIM),
        lambda: {},
        _ref_fused,
        DIM * DIM + DIM,
    ),
]


def _separate_reference(block: nn.Module) -> nn.Module:
    """Reference of the classes with separate projections: ``q := k`` (Next-ViT, EVA/AttentionRope unfused)."""
    ref = copy.deepcopy(block)
    q, k = (ref.q, ref.k) if hasattr(ref, "q") else (ref.q_proj, ref.k_proj)
    with torch.no_grad():
        groups = q.weight.shape[0] // k.weight.shape[0]  # grouped key/value heads: each query head takes its group's
        head = k.weight.shape[0] // getattr(ref, "num_kv_heads", ref.num_heads)
        w = k.weight.view(-1, head, k.weight.shape[1]).repeat_interleave(groups, dim=0).reshape_as(q.weight)
        q.weight.copy_(w)
        if q.bias is not None:
            kb = k.bias if k.bias is not None else torch.zeros_like(k.weight[:, 0])
            q.bias.copy_(kb.view(-1, head).repeat_interleave(groups, dim=0).flatten())
    return ref


@pytest.mark.parametrize(
    ("factory", "inputs", "kwargs", "reference", "delta"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_converted_equals_original_with_query_set_to_key(factory, inputs, kwargs, reference, delta):
    block = _randomise(factory())
    x, kw = inputs().double(), kwargs()
    ref = (reference or _separate_reference)(block)
    kv = convert_timm_attention(block, "kv")
    torch.testing.assert_close(kv(x, **kw), ref(x, **kw), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(kv(x, **kw), block(x, **kw))  # the original, with its own query, differs
    assert _n(block) - _n(kv) == delta
    assert not [name for name, _ in kv.named_parameters() if name.split(".")[0] in ("q", "q_proj", "q_norm", "q_bias")]
    kv.train()
    out = kv(x, **kw)  # gradients flow to the key weights through the query slots
    out.float().square().sum().backward()
    assert all(p.grad is not None for p in kv.parameters() if p.requires_grad)


def test_fused_attention_keeps_kv_rows_exactly():
    """A QKV checkpoint loaded into the QKV twin and converted gives the checkpoint's K/V/output weights."""
    block = _randomise(timm.layers.Attention(DIM, 2, qkv_bias=True))
    kv = convert_timm_attention(block, "kv")
    assert isinstance(kv, TimmKVAttention)
    assert torch.equal(kv.kv.weight, block.qkv.weight[DIM:]) and torch.equal(kv.kv.bias, block.qkv.bias[DIM:])
    assert torch.equal(kv.proj.weight, block.proj.weight)
    swin = _randomise(swin1.WindowAttention(DIM, 2, window_size=3))
    slot = convert_timm_attention(swin, "kv").qkv
    assert isinstance(slot, KeyAsQuery) and torch.equal(slot.kv.weight, swin.qkv.weight[DIM:])


@pytest.mark.parametrize(
    "factory",
    [lambda: swin1.WindowAttention(DIM, 2, window_size=3), lambda: swin2.WindowAttention(DIM, (3, 3), 2)],
    ids=["swin_v1", "swin_v2"],
)
@pytest.mark.filterwarnings("ignore:torch.searchsorted", "ignore:Using a non-tuple sequence")  # inside timm's resize
def test_window_resize_still_works_after_conversion(factory):
    """timm's own forward and set_window_size are kept: resizing the converted module matches the reference."""
    block = _randomise(factory())
    ref, kv = _ref_fused(block), convert_timm_attention(block, "kv")
    ref.set_window_size((2, 2))
    kv.set_window_size((2, 2))
    x = torch.randn(2, 4, DIM).double()
    torch.testing.assert_close(kv(x), ref(x), rtol=1e-9, atol=1e-9)


def test_macs_drop_by_the_query_projection():
    n = 6
    block = timm.layers.Attention(DIM, 2, qkv_bias=True).eval()
    assert (
        count_macs(block, (1, n, DIM)) - count_macs(convert_timm_attention(block, "kv"), (1, n, DIM)) == n * DIM * DIM
    )
    swin = swin1.WindowAttention(DIM, 2, window_size=3).eval()
    macs = count_macs(swin, (1, 9, DIM)) - count_macs(convert_timm_attention(swin, "kv"), (1, 9, DIM))
    assert macs == 9 * DIM * DIM
    nv = nextvit.EfficientAttention(DIM, head_dim=8, sr_ratio=1).eval()
    assert count_macs(nv, (1, n, DIM)) - count_macs(convert_timm_attention(nv, "kv"), (1, n, DIM)) == n * DIM * DIM


def test_kvpos_on_global_attention_adds_the_correction_and_starts_as_kv():
    block = _randomise(timm.layers.Attention(DIM, 2, qkv_bias=True))
    kv = convert_timm_attention(block, "kv")
    kvpos = convert_timm_attention(kv, "kvpos", pos_channels=10)
    assert _n(kvpos) - _n(kv) == 11 and torch.equal(kvpos.kv.weight, kv.kv.weight)
    x = torch.randn(2, 5, DIM).double()
    torch.testing.assert_close(kvpos(x), kv(x))  # initialised as plain KV (temperature 1, zero key bias)
    with torch.no_grad():
        kvpos.pos_proj.weight.normal_()
    assert not torch.allclose(kvpos(x), kv(x))
    again = convert_timm_attention(kvpos, "kvpos")  # the correction is kept
    torch.testing.assert_close(again(x), kvpos(x))
    rope = convert_timm_attention(_randomise(eva.EvaAttention(DIM, 2, norm_layer=nn.LayerNorm)), "kvpos")
    assert isinstance(rope, TimmKVAttentionRope) and rope.pos_proj is not None
    nv = convert_timm_attention(_randomise(nextvit.EfficientAttention(DIM, head_dim=8, sr_ratio=2)), "kvpos")
    assert isinstance(nv, TimmKVEfficientAttention) and nv(torch.randn(2, 8, DIM).double()).shape == (2, 8, DIM)


def _tiny_vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=DIM,
        num_heads=2,
        num_classes=3,
    )


def _tiny_swin() -> nn.Module:
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=56,
        embed_dim=DIM,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=7,
        num_classes=2,
    )


@pytest.mark.parametrize(
    ("make", "shape", "delta"),
    [
        (_tiny_vit, (2, 3, 32, 32), 2 * (DIM * DIM + DIM)),
        (_tiny_swin, (1, 3, 56, 56), (DIM * DIM + DIM) + (2 * DIM * 2 * DIM + 2 * DIM)),
        (
            lambda: timm.create_model("nextvit_small", pretrained=False, depths=(1, 1, 5, 1), num_classes=2),
            (1, 3, 64, 64),
            sum(c * c + c for c in (192, 384, 768)),  # the three E-MHSA (3/4 of each transformer block's channels)
        ),
    ],
    ids=["vit", "swin", "nextvit"],
)
def test_whole_timm_models_convert_and_train(make, shape, delta):
    model = make()
    n_qkv = _n(model)
    assert swap_attention(model, "kv") is model
    assert n_qkv - _n(model) == delta
    keys = list(model.state_dict())
    assert not [k for k in keys if k.endswith(("q.weight", "q_bias", "q_proj.weight", "q_norm.weight"))]
    assert not [k for k in keys if k.endswith("qkv.weight")]  # qkv is gone or holds only kv
    model.train()
    model(torch.randn(*shape)).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "attn" in n or "mhsa" in n)


def test_kvpos_whole_vit_and_refused_for_swin():
    vit = _tiny_vit()
    n = _n(vit)
    swap_attention(vit, "kvpos", pos_channels=50)
    assert _n(vit) - n == 2 * (51 - DIM * DIM - DIM)  # per layer: + Linear(50, 1), - the query projection
    vit(torch.randn(1, 3, 32, 32)).sum().backward()
    swin = _tiny_swin()
    before = {k: v.clone() for k, v in swin.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"KV\+Pos is not available for timm.models.swin_transformer.WindowAttention at 'layers.0.blocks.0.attn'",
    ):
        swap_attention(swin, "kvpos")
    assert swin.state_dict().keys() == before.keys()  # nothing was converted
    assert isinstance(swin.layers[0].blocks[0].attn.qkv, nn.Linear)


def _tiny_crossvit() -> nn.Module:
    return timm.create_model(
        "crossvit_tiny_240",
        pretrained=False,
        img_size=48,
        img_scale=(1.0, 1.0),
        patch_size=[12, 16],
        embed_dim=[DIM, 2 * DIM],
        depth=[[1, 1, 0]],
        num_heads=[2, 2],
        num_classes=2,
    )


def test_unsupported_raise_naming_class_and_path_or_are_skipped():
    cv = _tiny_crossvit()
    with pytest.raises(TypeError, match=r"'blocks.0.fusion.0.attn' \(timm.models.crossvit.CrossAttention"):
        swap_attention(cv, "kv")
    assert isinstance(cv.blocks[0].blocks[0][0].attn, timm.layers.Attention)  # unchanged on error
    skipped = unsupported_attention(cv)
    assert sorted(skipped) == ["blocks.0.fusion.0.attn", "blocks.0.fusion.1.attn"]
    swap_attention(cv, "kv", skip_unsupported=True)
    assert all(isinstance(b[0].attn, TimmKVAttention) for b in cv.blocks[0].blocks)
    assert type(cv.blocks[0].fusion[0].attn).__name__ == "CrossAttention"
    cv(torch.randn(1, 3, 48, 48)).sum().backward()

    cait_model = timm.create_model(
        "cait_xxs24_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=DIM,
        depth=1,
        num_heads=2,
        depth_token_only=1,
        num_classes=2,
    )
    with pytest.raises(TypeError, match="timm.models.cait.ClassAttn: its query is the class token only"):
        swap_attention(cait_model, "kv")
    swap_attention(cait_model, "kv", skip_unsupported=True)
    assert isinstance(cait_model.blocks[0].attn.qkv, KeyAsQuery)

    class Odd(nn.Module):  # an attention kvmonai does not know
        def __init__(self) -> None:
            super().__init__()
            self.to_q = nn.Linear(4, 4)

    net = nn.Sequential(nn.Sequential(Odd()), nn.Sequential(timm.layers.Attention(DIM, 2)))
    with pytest.raises(TypeError, match=r"'0.0' \(.*Odd: an attention module with a query projection"):
        swap_attention(net, "kv")
    swap_attention(net, "kv", skip_unsupported=True)
    assert isinstance(net[1][0], TimmKVAttention) and isinstance(net[0][0], Odd)
    with pytest.raises(TypeError, match="convert_timm_attention"):
        swap_attention(timm.layers.Attention(DIM, 2), "kv")


def test_qkv_target_is_a_no_op_and_kv_is_not_reverted():
    vit = _tiny_vit()
    attn = [b.attn for b in vit.blocks]
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    swap_attention(vit, "qkv")
    assert [b.attn for b in vit.blocks] == attn  # the same module objects
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in state.items())
    swap_attention(vit, "kv")
    swap_attention(vit, "kv")  # converting again keeps the function
    with pytest.raises(ValueError, match="was converted to KV attention and is not converted back"):
        swap_attention(vit, "qkv")
