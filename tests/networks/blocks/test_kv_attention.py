"""Tests of the attention family: shapes, symmetry, parameter deltas, KV+Pos exactness, gradients, export."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import SABlock

from kvmonai.networks.blocks import ATTENTION_VARIANTS, KVSelfAttention, borji_positional_encoding, positional_split


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
@pytest.mark.parametrize("combined", [True, False])
def test_shapes(attention, combined):
    m = KVSelfAttention(32, 4, attention=attention, use_combined_linear=combined, qkv_bias=True)
    for n in (1, 7, 50):
        assert m(torch.randn(3, n, 32)).shape == (3, n, 32)


def test_hidden_input_size_and_dim_head():
    m = KVSelfAttention(32, 4, dim_head=5, hidden_input_size=24, attention="kv")
    assert m.kv.weight.shape == (2 * 20, 24)
    assert m(torch.randn(2, 9, 24)).shape == (2, 9, 24)


def test_parameter_deltas_vit_base():
    """hidden 768, 12 heads, qkv_bias: qkv - kv = 768^2 + 768 and kvpos - kv = m + 1 = 51."""
    counts = {a: n_params(KVSelfAttention(768, 12, qkv_bias=True, attention=a)) for a in ATTENTION_VARIANTS}
    assert counts["qkv"] - counts["kv"] == 590_592 == 768**2 + 768
    assert counts["kvpos"] - counts["kv"] == 51
    assert counts["qkv"] == n_params(SABlock(768, 12, qkv_bias=True))


def test_parameter_delta_other_pos_channels():
    kv = n_params(KVSelfAttention(64, 4, attention="kv"))
    assert n_params(KVSelfAttention(64, 4, attention="kvpos", pos_channels=10)) - kv == 11


def _kv_logits(m: KVSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    k = torch.nn.functional.linear(x, m.kv.weight[: m.inner_dim], m.kv.bias[: m.inner_dim])
    k = k.reshape(b, n, m.num_heads, m.dim_head).transpose(1, 2)
    return k @ k.transpose(-1, -2) * m.scale


def test_kv_logits_symmetric_and_match_saved_map():
    m = KVSelfAttention(48, 3, qkv_bias=True, save_attn=True, attention="kv")
    x = torch.randn(2, 11, 48)
    m(x)
    logits = _kv_logits(m, x)
    torch.testing.assert_close(logits, logits.transpose(-1, -2))
    torch.testing.assert_close(m.att_mat, logits.softmax(-1))
    # the normalised map is not symmetric, but A_ij / A_ji = Z_j / Z_i (row normalisers)
    z = logits.exp().sum(-1)
    torch.testing.assert_close(m.att_mat * z[..., :, None], (m.att_mat * z[..., :, None]).transpose(-1, -2))


def test_kv_has_no_query_projection():
    m = KVSelfAttention(32, 4, attention="kv", use_combined_linear=False)
    assert isinstance(m.to_q, torch.nn.Identity)
    assert "to_q.weight" not in m.state_dict()


def _literal_kvpos(m: KVSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Borji's formulation: logits broadcast over the (n, n, m) tensor P, then Linear(m, 1), then softmax."""
    b, n, _ = x.shape
    kv = m.kv(x).reshape(b, n, 2, m.num_heads, m.dim_head).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    s = k @ k.transpose(-1, -2) * m.scale  # (b, h, n, n)
    p = borji_positional_encoding(n, m.pos_channels)  # (n, n, m)
    logits = m.pos_proj(s[..., None] + p).squeeze(-1)  # (b, h, n, n)
    attn = logits.softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    return m.out_proj(out), attn


@pytest.mark.parametrize("n", [1, 5, 37])
@pytest.mark.parametrize("pos_channels", [50, 10, 7])
def test_kvpos_equals_literal_form(n, pos_channels):
    m = KVSelfAttention(64, 4, qkv_bias=True, save_attn=True, attention="kvpos", pos_channels=pos_channels)
    with torch.no_grad():  # a trained-looking correction, not the KV-like initialisation
        m.pos_proj.weight.normal_(0, 0.5)
        m.pos_proj.bias.normal_()
    x = torch.randn(2, n, 64)
    expected_out, expected_attn = _literal_kvpos(m, x)
    out = m(x)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.att_mat, expected_attn, atol=1e-5, rtol=0)


def test_borji_encoding_layout():
    p = borji_positional_encoding(6, 50)
    assert p.shape == (6, 6, 50)
    q, k = positional_split(50)
    assert (q, k) == (26, 24)
    # query channels vary only with i, key channels only with j
    assert torch.equal(p[:, :1, :q].expand(6, 6, q), p[..., :q])
    assert torch.equal(p[:1, :, q:].expand(6, 6, k), p[..., q:])
    torch.testing.assert_close(p[3, 0, 0], torch.tensor(3.0).sin())
    torch.testing.assert_close(p[0, 2, q + 1], torch.tensor(2.0).cos())


def test_kvpos_starts_as_kv():
    kv = KVSelfAttention(32, 4, attention="kv")
    kvpos = KVSelfAttention(32, 4, attention="kvpos")
    kvpos.load_state_dict(kv.state_dict(), strict=False)
    x = torch.randn(2, 13, 32)
    torch.testing.assert_close(kvpos(x), kv(x))


def test_kvpos_memory_is_linear_in_n():
    m = KVSelfAttention(32, 4, attention="kvpos")
    assert m.key_position_bias(4096).shape == (4096,)
    assert all(b.numel() <= 64 for b in m.buffers())  # no n x n (x m) buffer


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_gradients(attention):
    m = KVSelfAttention(16, 2, qkv_bias=True, attention=attention).double()
    x = torch.randn(2, 5, 16, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name  # every parameter takes part in the graph (DDP needs it)
        if name != "pos_proj.bias":  # the bias is constant along every softmax row: its gradient is exactly 0
            assert p.grad.abs().sum() > 0, name
    if attention == "kvpos":
        assert m.pos_proj.bias.grad.abs().max() < 1e-12


def test_qkv_is_a_drop_in_for_sablock():
    ref = SABlock(32, 4, qkv_bias=True, save_attn=True)
    m = KVSelfAttention(32, 4, qkv_bias=True, save_attn=True, attention="qkv")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m.att_mat, ref.att_mat)


def test_attn_mask_matches_sablock():
    ref = SABlock(32, 4, qkv_bias=True)
    m = KVSelfAttention(32, 4, qkv_bias=True, attention="qkv")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 5:] = 0
    torch.testing.assert_close(m(x, attn_mask=mask), ref(x, attn_mask=mask))
    assert not torch.allclose(m(x, attn_mask=mask), m(x))


def test_causal_matches_sablock():
    ref = SABlock(32, 4, causal=True, sequence_length=12)
    m = KVSelfAttention(32, 4, causal=True, sequence_length=12, attention="qkv")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(m(x), ref(x))


@pytest.mark.parametrize("grid", [(4, 5), (3, 3, 3)])  # MONAI 1.6.1 rejects non-cubic 3D grids
def test_rel_pos_on_2d_and_3d_token_grids(grid):
    n = int(torch.tensor(grid).prod())
    ref = SABlock(32, 4, rel_pos_embedding="decomposed", input_size=grid)
    m = KVSelfAttention(32, 4, rel_pos_embedding="decomposed", input_size=grid, attention="qkv")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, n, 32)
    torch.testing.assert_close(m(x), ref(x))
    for attention in ("kv", "kvpos"):
        out = KVSelfAttention(32, 4, rel_pos_embedding="decomposed", input_size=grid, attention=attention)(x)
        assert out.shape == x.shape


def test_dropout_only_in_training():
    m = KVSelfAttention(32, 4, dropout_rate=0.5, attention="kv")
    x = torch.randn(2, 9, 32)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


def test_attention_dtype():
    m = KVSelfAttention(32, 4, attention="kvpos", attention_dtype=torch.float64)
    x = torch.randn(2, 9, 32)
    assert m(x).dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "qk"}, "attention must be one of"),
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"dropout_rate": 1.5}, "dropout_rate must be in"),
        ({"dropout_rate": -0.1}, "dropout_rate must be in"),
        ({"num_heads": 0}, "must be positive"),
        ({"causal": True}, "sequence_length"),
        ({"rel_pos_embedding": "decomposed"}, "input_size"),
        ({"attention": "kvpos", "pos_channels": 0}, "pos_channels"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"hidden_size": 32, "num_heads": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        KVSelfAttention(**args)


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_trace_and_script_export(attention, tmp_path):
    m = KVSelfAttention(32, 4, qkv_bias=True, attention=attention).eval()
    x = torch.randn(2, 9, 32)
    traced = torch.jit.trace(m, x)
    path = tmp_path / "attn.ts"
    traced.save(str(path))
    torch.testing.assert_close(torch.jit.load(str(path))(x), m(x))
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))


@pytest.mark.parametrize("n_q, n_k", [(37, 37), (50, 13)])
def test_append_key_bias_equals_the_additive_mask(n_q, n_k):
    """The bias folded into extra head channels gives the masked attention's output and gradients."""
    import torch.nn.functional as F

    from kvmonai.networks.blocks import append_key_bias

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, n_q, 16), torch.randn(2, 3, n_k, 16), torch.randn(2, 3, n_k, 16)
    bias = torch.randn(n_k)
    scale = 0.25
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    ref = F.scaled_dot_product_attention(*leaves[:3], attn_mask=leaves[3].view(1, 1, 1, -1), scale=scale)
    ref.pow(2).sum().backward()
    fused_leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    qa, ka, va = append_key_bias(*fused_leaves[:3], fused_leaves[3] / scale)
    out = F.scaled_dot_product_attention(qa, ka, va, scale=scale)[..., :16]
    out.pow(2).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_leaves, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_kvpos_fused_path_equals_mask_path():
    """KV+Pos in training mode uses the fused path; with save_attn (or in eval) it adds the bias as a mask."""
    torch.manual_seed(0)
    block = KVSelfAttention(64, 4, qkv_bias=True, attention="kvpos")
    with torch.no_grad():
        block.pos_proj.weight.normal_(0, 0.3)  # a trained-looking position correction, not the initial plain KV
    x = torch.randn(2, 30, 64)
    fused = block(x)
    masked_eval = block.eval()(x)
    block.train().save_attn = True
    masked = block(x)
    torch.testing.assert_close(fused, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, masked_eval, atol=1e-5, rtol=1e-5)
