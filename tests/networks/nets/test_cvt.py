"""Tests of the CvT segmenter and its convolutional attention with QKV, KV (three key modes) and KV+Pos."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvmonai.complexity.counting import count_macs
from kvmonai.networks.blocks import borji_positional_encoding, positional_split
from kvmonai.networks.nets.cvt import KV_MODES, PRESETS, CvTAttention, CvTUNet, key_position_bias

TINY = PRESETS["tiny"]
VARIANTS = [("qkv", "shared_stride1")] + [(a, m) for a in ("kv", "kvpos") for m in KV_MODES]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("attention", "kv_mode"), VARIANTS)
@pytest.mark.parametrize("in_channels", [1, 3, 5])
def test_shapes(attention, kv_mode, in_channels):
    net = CvTUNet(in_channels, 3, (64, 48), attention=attention, kv_mode=kv_mode, **TINY)
    assert net(torch.randn(2, in_channels, 64, 48)).shape == (2, 3, 64, 48)
    attn = [m for m in net.modules() if isinstance(m, CvTAttention)]
    assert len(attn) == sum(TINY["depths"]) and all(a.attention == attention for a in attn)


def test_paper_encoder_parameter_counts():
    """CvT-13 encoder = reference CvT-13 (19,997,480) without its 1000-class head (385,000) and cls token (384)."""
    counts, encoder = {}, {}
    with torch.device("meta"):
        for attention, kv_mode in VARIANTS:
            net = CvTUNet(3, 3, 224, attention=attention, kv_mode=kv_mode, **PRESETS["paper"])
            counts[attention, kv_mode] = _count(net)
            encoder[attention, kv_mode] = sum(_count(m) for m in (net.stage1, net.stage2, net.stage3, net.norm))
    assert encoder["qkv", "shared_stride1"] == 19_997_480 - 385_000 - 384
    removed = sum(depth * (d * d + d + 9 * d + 2 * d) for d, depth in zip((64, 192, 384), (1, 2, 10), strict=True))
    assert removed == 1_603_840
    for mode in KV_MODES:
        assert counts["qkv", "shared_stride1"] - counts["kv", mode] == removed
        assert counts["kvpos", mode] - counts["kv", mode] == 13 * 51


def test_tiny_parameter_deltas():
    qkv = _count(CvTUNet(3, 3, 32, attention="qkv", **TINY))
    # per attention layer KV removes the query path: depthwise 3x3 conv (9 d), BatchNorm (2 d), Linear (d^2 + d)
    removed = sum(depth * (d * d + d + 11 * d) for d, depth in zip(TINY["embed_dims"], TINY["depths"], strict=True))
    for mode in KV_MODES:
        kv = _count(CvTUNet(3, 3, 32, attention="kv", kv_mode=mode, **TINY))
        kvpos = _count(CvTUNet(3, 3, 32, attention="kvpos", kv_mode=mode, **TINY))
        assert qkv - kv == removed
        assert kvpos - kv == sum(TINY["depths"]) * 51


def test_macs_order_of_kv_modes():
    macs = {m: count_macs(CvTUNet(1, 3, 64, attention="kv", kv_mode=m, **TINY), (1, 1, 64, 64)) for m in KV_MODES}
    qkv = count_macs(CvTUNet(1, 3, 64, attention="qkv", **TINY), (1, 1, 64, 64))
    assert macs["down_up"] < macs["shared_stride1"] < qkv < macs["full_res"]


def test_key_position_bias_matches_borji_encoding():
    torch.manual_seed(0)
    m = 50
    weight, bias = torch.randn(1, m), torch.randn(1)
    q = positional_split(m)[0]
    literal = borji_positional_encoding(40, m)  # (40, 40, m): [query index, key index, channel]
    for num_keys in (1, 10, 40):
        expected = literal[7, :num_keys, q:] @ weight[0, q:] + bias
        torch.testing.assert_close(key_position_bias(weight, bias, num_keys, m), expected)
    with pytest.raises(ValueError, match="num_keys"):
        key_position_bias(weight, bias, 0, m)


def _dw_bn(module, grid, stride):
    """A projection's depthwise conv + BatchNorm (eval statistics) at the given stride."""
    conv, bn = module.conv, module.adn.N
    y = F.conv2d(grid, conv.weight, None, stride, conv.padding, groups=conv.groups)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _reference_attention(attn: CvTAttention, x, h, w, pos_channels=50):
    """Literal per-head softmax attention; KV+Pos with Borji's full (n_q, n_k, m) positional tensor."""
    b, n, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, h, w)

    def tokens(t):
        return t.flatten(2).transpose(1, 2)

    mode = attn.kv_mode
    if mode == "qkv":
        q = attn.proj_q(tokens(_dw_bn(attn.conv_proj_q, grid, 1)))
        k = attn.proj_k(tokens(_dw_bn(attn.conv_proj_k, grid, 2)))
    elif mode == "shared_stride1":
        q = attn.proj_k(tokens(_dw_bn(attn.conv_proj_k, grid, 1)))
        k = attn.proj_k(tokens(_dw_bn(attn.conv_proj_k, grid, 2)))  # the same weights at stride 2
    else:
        stride = 1 if mode == "full_res" else 2
        k = attn.proj_k(tokens(_dw_bn(attn.conv_proj_k, grid, stride)))
        q = k
    v_grid = _dw_bn(attn.conv_proj_v, grid, 1 if mode == "full_res" else 2)
    v = attn.proj_v(tokens(v_grid))

    def heads(t):
        return t.reshape(b, t.shape[1], attn.num_heads, -1).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    logits = q @ k.transpose(-1, -2) * attn.scale
    if attn.pos_proj is not None:
        nq, nk = logits.shape[-2:]
        pos = borji_positional_encoding(max(nq, nk), pos_channels)[:nq, :nk]
        logits = attn.pos_proj(logits[..., None] + pos).squeeze(-1)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)
    out = attn.proj(out)
    if mode == "down_up":
        out = out.transpose(1, 2).reshape(b, c, v_grid.shape[2], v_grid.shape[3])
        out = tokens(F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False))
    return out


@pytest.mark.parametrize(("attention", "kv_mode"), VARIANTS)
@pytest.mark.parametrize(("h", "w"), [(6, 4), (5, 7)])
def test_attention_matches_literal_form(attention, kv_mode, h, w):
    torch.manual_seed(0)
    attn = CvTAttention(12, 3, attention=attention, kv_mode=kv_mode, attn_scale="head")
    with torch.no_grad():  # non-trivial BatchNorm statistics and positional weights
        for module in attn.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
        if attn.pos_proj is not None:
            attn.pos_proj.weight.normal_()
    attn.eval()
    x = torch.randn(2, h * w, 12)
    expected = _reference_attention(attn, x, h, w)
    torch.testing.assert_close(attn(x, h, w), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_mode", KV_MODES)
def test_kvpos_starts_as_kv(kv_mode):
    torch.manual_seed(0)
    kv = CvTUNet(1, 2, 32, attention="kv", kv_mode=kv_mode, **TINY).eval()
    kvpos = CvTUNet(1, 2, 32, attention="kvpos", kv_mode=kv_mode, **TINY).eval()
    missing, unexpected = kvpos.load_state_dict(kv.state_dict(), strict=False)
    assert not unexpected and missing and all("pos_proj" in key for key in missing)
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(kvpos(x), kv(x))


def test_attention_scale():
    assert CvTAttention(96, 3, attn_scale="dim").scale == 96**-0.5  # reference CvT
    assert CvTAttention(96, 3, attn_scale="head").scale == 32**-0.5


def test_deterministic_init(assert_same_init):
    assert_same_init(lambda: CvTUNet(1, 3, 32, attention="kvpos", **TINY))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize(("attention", "kv_mode"), [("qkv", "shared_stride1"), ("kvpos", "down_up")])
def test_trace_round_trip(attention, kv_mode, assert_trace_round_trip):
    torch.manual_seed(0)
    net = CvTUNet(1, 3, (32, 48), attention=attention, kv_mode=kv_mode, **TINY).eval()
    assert_trace_round_trip(net, torch.randn(2, 1, 32, 48))


@pytest.mark.parametrize(
    ("attention", "kv_mode"),
    [("qkv", "shared_stride1"), ("kv", "shared_stride1"), ("kv", "full_res"), ("kvpos", "down_up")],
)
def test_training_reduces_loss(attention, kv_mode, train_losses):
    torch.manual_seed(0)
    net = CvTUNet(1, 2, 32, attention=attention, kv_mode=kv_mode, **TINY)
    x = torch.randn(4, 1, 32, 32)
    y = (x[:, 0] > 0.5).long()
    losses = train_losses(net, x, y, F.cross_entropy, torch.optim.Adam(net.parameters(), lr=3e-3), steps=12)
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "qk"}, "attention must be one of"),
        ({"kv_mode": "stride1"}, "kv_mode must be one of"),
        ({"attn_scale": "token"}, "attn_scale must be one of"),
        ({"img_size": 40}, "multiple of 16"),
        ({"img_size": (32, 24)}, "multiple of 16"),
        ({"out_channels": 0}, "must be positive"),
        ({"embed_dims": (8, 16, 25)}, "multiples of num_heads"),
        ({"depths": (1, 1)}, "one entry per stage"),
        ({"patch_strides": (2, 4, 2)}, "patch_strides\\[0\\] must be 4"),
        ({"decoder_channels": (8,)}, "two positive widths"),
        ({"drop_path_rates": (0.0, 0.0, 2.0)}, "drop_path_rates must be in"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"in_channels": 3, "out_channels": 3, "img_size": 32, **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        CvTUNet(**args)


@pytest.mark.parametrize("kv_mode", KV_MODES)
def test_kvpos_elementwise_ops_cover_cvt(kv_mode):
    """Every CvT KV+Pos layer is counted, with its own query and key numbers (the keys are strided)."""
    from kvmonai.complexity import kvpos_elementwise_ops

    net = CvTUNet(1, 3, 64, attention="kvpos", kv_mode=kv_mode, **TINY)
    expected = 0
    for stage, side in ((net.stage1, 16), (net.stage2, 8), (net.stage3, 4)):  # 1/4, 1/8, 1/16 of 64
        strided = ((side + 1) // 2) ** 2
        n_q, n_k = {"full_res": (side**2, side**2), "down_up": (strided, strided)}.get(kv_mode, (side**2, strided))
        for block in stage.blocks:
            a = block.attn
            expected += a.num_heads * n_q * a.dim_head + n_k * 24 + a.num_heads * n_q * n_k
    assert kvpos_elementwise_ops(net, input_shape=(1, 1, 64, 64)) == expected
    with pytest.raises(ValueError, match="pass input_shape"):
        kvpos_elementwise_ops(net, 256)
