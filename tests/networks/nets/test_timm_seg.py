"""timm backbones as segmenters: the three registered ones end to end, any timm name, exact complexity deltas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kvmonai.complexity import count_macs, count_parameters
from kvmonai.networks import EXTRA_ARCHITECTURES, create, lookup
from kvmonai.networks.nets.timm_seg import CROSSVIT_PRESETS, TimmSegmenter, decoder_width_at, feature_strides
from kvmonai.networks.timm_import import import_timm

timm = import_timm()
SIZE = 64

#: a tiny DeiT (any timm name; sizes through backbone_kwargs)
DEIT = {"backbone_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2}}


def _query_costs(backbone: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Reference for what KV saves: parameters and MACs of the query projections of timm's (QKV) attention.

    Hooks the query projection of each self-attention module that ``swap_attention`` converts (timm ``Attention``,
    Swin's ``WindowAttention``, Next-ViT's ``EfficientAttention``) and counts ``dim * attn_dim (+ attn_dim)``
    parameters and ``tokens * dim * attn_dim`` MACs, ``tokens`` as seen by that projection (all windows, padding
    included). Next-ViT's E-MHSA with ``sr_ratio > 1`` saves no MACs: its KV form applies ``W_k`` to the full
    sequence for the queries instead of ``W_q``. CrossViT's ``CrossAttention`` is not converted and not counted.
    """
    params, macs, hooks = [0], [0], []
    for module in backbone.modules():
        name = type(module).__name__
        if name in ("Attention", "WindowAttention"):
            proj, share = module.qkv, 3
        elif name == "EfficientAttention":
            proj, share = module.q, 1
        else:
            continue
        attn_dim = proj.out_features // share
        params[0] += proj.in_features * attn_dim + (attn_dim if proj.bias is not None else 0)
        saves_macs = name != "EfficientAttention" or module.sr_ratio == 1

        def hook(mod: nn.Module, args: tuple, saves: bool = saves_macs, dim: int = attn_dim) -> None:
            if saves:
                macs[0] += args[0].numel() // mod.in_features * mod.in_features * dim

        hooks.append(proj.register_forward_pre_hook(hook))
    with torch.no_grad():
        backbone.eval()(torch.randn(*shape))
    for h in hooks:
        h.remove()
    return params[0], macs[0]


@pytest.mark.parametrize("arch", EXTRA_ARCHITECTURES)
def test_registered_backbones_end_to_end(arch):
    """Build, forward shape, backward, and the exact parameter/MAC saving of KV over QKV at the tiny preset."""
    assert lookup(arch).attentions == ("qkv", "kv") and not lookup(arch).default_study
    nets = {}
    for attention in ("qkv", "kv"):
        torch.manual_seed(0)
        nets[attention] = create(arch, attention, "tiny", in_channels=5, img_size=SIZE)
    x = torch.randn(2, 5, SIZE, SIZE)
    out = nets["kv"].train()(x)
    assert out.shape == (2, 3, SIZE, SIZE)
    out.square().mean().backward()
    grads = [p.grad for p in nets["kv"].backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert nets["kv"].head[0].weight.grad.abs().sum() > 0

    q_params, q_macs = _query_costs(nets["qkv"].backbone, (1, 5, SIZE, SIZE))
    assert q_params > 0 and q_macs > 0
    assert count_parameters(nets["qkv"]) - count_parameters(nets["kv"]) == q_params
    shape = (1, 5, SIZE, SIZE)
    assert count_macs(nets["qkv"], shape) - count_macs(nets["kv"], shape) == q_macs
    kept = nets["kv"].kept_attention
    assert (sorted({r.split(":")[0] for r in kept.values()}) == ["timm.models.crossvit.CrossAttention"]) == (
        arch == "crossvit"
    )


def test_kv_keeps_the_key_value_weights_of_the_qkv_backbone():
    """Same seed: the KV model's K, V and output projections are those of the QKV model (Swin, fused qkv)."""
    torch.manual_seed(0)
    qkv = create("swin", "qkv", "tiny", img_size=SIZE)
    torch.manual_seed(0)
    kv = create("swin", "kv", "tiny", img_size=SIZE)
    name = "backbone.layers_0.blocks.0.attn"
    fused = qkv.get_submodule(f"{name}.qkv").weight
    dim = fused.shape[1]
    kv_rows = torch.cat([p for n, p in kv.named_parameters() if n.startswith(f"{name}.qkv") and p.ndim == 2])
    torch.testing.assert_close(kv_rows, fused[dim:])
    torch.testing.assert_close(kv.get_submodule(f"{name}.proj").weight, qkv.get_submodule(f"{name}.proj").weight)


def test_any_timm_name_through_the_factory():
    """create("timm:<name>"): a single-scale DeiT gives four blocks at strides 2-16; KV+Pos adds 51 per layer."""
    torch.manual_seed(0)
    qkv = create("timm:deit_tiny_patch16_224", "qkv", "tiny", img_size=SIZE, **DEIT)
    assert qkv.out_indices == (0, 1, 2, 3) and qkv.strides == (2, 4, 8, 16)
    assert [m.out_channels for m in qkv.laterals] == [decoder_width_at(s, 4) for s in (2, 4, 8, 16)]
    nets = {"qkv": qkv}
    for attention in ("kv", "kvpos"):
        torch.manual_seed(0)
        nets[attention] = create("timm:deit_tiny_patch16_224", attention, "tiny", img_size=SIZE, **DEIT)
    x = torch.randn(1, 3, SIZE, SIZE)
    for net in nets.values():
        assert net.eval()(x).shape == (1, 3, SIZE, SIZE)
    n = {k: count_parameters(v) for k, v in nets.items()}
    assert n["qkv"] - n["kv"] == 4 * (32 * 32 + 32) and n["kvpos"] - n["kv"] == 4 * 51
    tokens = (SIZE // 16) ** 2 + 1  # patches and the class token
    shape = (1, 3, SIZE, SIZE)
    assert count_macs(nets["qkv"], shape) - count_macs(nets["kv"], shape) == 4 * tokens * 32 * 32
    assert create("timm:resnet18", "qkv", "tiny", img_size=SIZE).strides == (2, 4, 8, 16, 32)


def test_forward_intermediates_where_features_only_fails(monkeypatch):
    """A model whose features_only build fails is used through forward_intermediates, with the same features."""
    torch.manual_seed(0)
    reference = create("timm:deit_tiny_patch16_224", "kv", "tiny", img_size=SIZE, **DEIT)
    real = timm.create_model

    def no_features(name, **kwargs):
        if kwargs.get("features_only"):
            raise RuntimeError("features_only not implemented")
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_features)
    torch.manual_seed(0)
    net = create("timm:deit_tiny_patch16_224", "kv", "tiny", img_size=SIZE, **DEIT)
    assert net.intermediates and not reference.intermediates and net.strides == reference.strides
    net.backbone.load_state_dict(reference.backbone.model.state_dict(), strict=False)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(net.eval().features(x), reference.eval().features(x), strict=True):
            torch.testing.assert_close(a, b)


def test_feature_strides():
    assert feature_strides([16.0] * 4) == (2, 4, 8, 16)  # a ViT's blocks, as UNETR resamples them
    assert feature_strides([4, 8, 16, 32]) == (4, 8, 16, 32)
    assert feature_strides([12.0, 17.1]) == (8, 16)  # timm's crossvit_*_240 grids (20 and 14 at 240)
    with pytest.raises(ValueError, match="pass fewer out_indices"):
        feature_strides([16.0] * 5)
    with pytest.raises(ValueError, match="fine-to-coarse"):
        feature_strides([32, 4])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"not a timm model; close names: \[.*'swin_tiny_patch4_window7_224'"):
        create("timm:swin_tiny_patch4_windw7_224")
    with pytest.raises(ValueError, match="attention for 'swin' must be one of \\('qkv', 'kv'\\).*shifted windows"):
        create("swin", "kvpos", "tiny", img_size=SIZE)
    with pytest.raises(ValueError, match="KV\\+Pos is not available for .*WindowAttention"):
        create("timm:swin_tiny_patch4_window7_224", "kvpos", "tiny", img_size=SIZE)
    with pytest.raises(ValueError, match="'kvpos' needs every attention .* 2 would stay .*crossvit.CrossAttention"):
        TimmSegmenter(3, 3, SIZE, "kvpos", **CROSSVIT_PRESETS["tiny"])
    with pytest.raises(ValueError, match="attention must be one of"):
        create("timm:resnet18", "qk", "tiny", img_size=SIZE)
    with pytest.raises(ValueError, match="'kv' for timm model 'resnet18': .* holds no .* attention"):
        create("timm:resnet18", "kv", "tiny", img_size=SIZE)
    with pytest.raises(ValueError, match="cannot take img_size=\\(60, 60\\)"):
        create("crossvit", "kv", "tiny", img_size=60)
    with pytest.raises(ValueError, match="rejects its arguments"):
        create("timm:resnet18", preset="tiny", img_size=SIZE, backbone_kwargs={"no_such_argument": 1})
    with pytest.raises(ValueError, match="decoder_width must be positive"):
        TimmSegmenter(3, 3, SIZE, model_name="resnet18", decoder_width=0)
