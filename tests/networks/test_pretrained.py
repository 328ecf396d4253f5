"""Pretrained weights from local files: each format in its exact key layout and shapes, mapped onto each target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kvmonai.networks import create
from kvmonai.networks.pretrained import PretrainedError, detect_format, load_pretrained, read_state
from kvmonai.networks.timm_import import import_timm

D, HEADS, MLP = 32, 2, 64  # the tiny presets' ViT width (SETR, UNETR), heads and MLP width


def _timm_vit(img: int, patch: int, depth: int, heads: int = HEADS, in_chans: int = 3):
    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=patch, depth=depth, embed_dim=D,
        num_heads=heads, mlp_ratio=MLP / D, num_classes=5, in_chans=in_chans,
    ).eval()  # fmt: skip


def _setr_tokens(net, x: torch.Tensor) -> torch.Tensor:
    """SETR's encoder output (class token first), as its forward computes it before the decoder."""
    tokens = net.patch_embedding(x)
    cls = (net.cls_token + net.cls_position).expand(x.shape[0], -1, -1)
    tokens = torch.cat((cls, tokens), dim=1)
    for block in net.blocks:
        tokens = block(tokens)
    return net.norm(tokens)


def _google_npz(path, depth: int, grid: int, patch: int, hybrid: dict | None = None) -> dict[str, np.ndarray]:
    """A ViT (or R50+ViT with ``hybrid`` widths) ``.npz`` with Google's names and shapes, random values."""
    rng = np.random.default_rng(0)
    hd = D // HEADS

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    cin = hybrid["width"] * 16 if hybrid else 3
    w = {
        "embedding/kernel": r(patch, patch, cin, D),
        "embedding/bias": r(D),
        "cls": r(1, 1, D),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, D),
        "Transformer/encoder_norm/scale": r(D),
        "Transformer/encoder_norm/bias": r(D),
        "head/kernel": r(D, 5),
        "head/bias": r(5),
    }
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            w[f"{a}{n}/kernel"], w[f"{a}{n}/bias"] = r(D, HEADS, hd), r(HEADS, hd)
        w[a + "out/kernel"], w[a + "out/bias"] = r(HEADS, hd, D), r(D)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = r(D), r(D)
        w[b + "MlpBlock_3/Dense_0/kernel"], w[b + "MlpBlock_3/Dense_0/bias"] = r(D, MLP), r(MLP)
        w[b + "MlpBlock_3/Dense_1/kernel"], w[b + "MlpBlock_3/Dense_1/bias"] = r(MLP, D), r(D)
    if hybrid:
        width = hybrid["width"]
        w["conv_root/kernel"], w["gn_root/scale"], w["gn_root/bias"] = r(7, 7, 3, width), r(width), r(width)
        cin = width
        for s, units in enumerate(hybrid["units"], start=1):
            mid, cout = width * 2 ** (s - 1), width * 4 * 2 ** (s - 1)
            for u in range(1, units + 1):
                base = f"block{s}/unit{u}/"
                c0 = cin if u == 1 else cout
                for k, (ci, co, ks) in enumerate(((c0, mid, 1), (mid, mid, 3), (mid, cout, 1)), start=1):
                    w[f"{base}conv{k}/kernel"] = r(ks, ks, ci, co)
                    w[f"{base}gn{k}/scale"], w[f"{base}gn{k}/bias"] = r(co), r(co)
                if u == 1:
                    w[base + "conv_proj/kernel"] = r(1, 1, c0, cout)
                    w[base + "gn_proj/scale"], w[base + "gn_proj/bias"] = r(cout), r(cout)
            cin = cout
    np.savez(path, **w)
    return w


def test_timm_vit_into_setr_computes_timm_features(tmp_path):
    """A timm ViT state dict (.pth) in SETR: the encoder computes exactly timm's forward_features."""
    vit = _timm_vit(32, 4, depth=2)
    torch.save({"state_dict": vit.state_dict()}, tmp_path / "vit.pth")
    net = create("setr", "qkv", "tiny", img_size=32).eval()
    report = load_pretrained(net, tmp_path / "vit.pth")
    assert report.source_format == "timm_vit" and not report.missing and not report.unexpected
    assert sorted(report.ignored) == ["head.bias", "head.weight"] and report.encoder_fraction == 1.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_setr_tokens(net, x), vit.forward_features(x), atol=1e-5, rtol=1e-4)


def test_kv_target_keeps_k_v_proj_and_drops_q(tmp_path):
    """KV and KV+Pos SETR from a timm .safetensors: K, V rows and the output projection equal the file's, no Q."""
    from safetensors.torch import save_file

    vit = _timm_vit(32, 4, depth=2)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    src = read_state(tmp_path / "vit.safetensors")
    for attention in ("kv", "kvpos"):
        net = create("setr", attention, "tiny", img_size=32)
        report = load_pretrained(net, tmp_path / "vit.safetensors")
        for i, block in enumerate(net.blocks):
            qkv_w, qkv_b = src[f"blocks.{i}.attn.qkv.weight"], src[f"blocks.{i}.attn.qkv.bias"]
            assert torch.equal(block.attn.kv.weight, qkv_w[D:]) and torch.equal(block.attn.kv.bias, qkv_b[D:])
            assert torch.equal(block.attn.out_proj.weight, src[f"blocks.{i}.attn.proj.weight"])
            assert torch.equal(block.mlp.linear1.weight, src[f"blocks.{i}.mlp.fc1.weight"])
        assert not any(".qkv." in k or "to_q" in k for k in net.state_dict())
        assert report.dropped == sorted(
            f"blocks.{i}.attn.qkv.{p} (query rows 0:{D})" for i in range(2) for p in ("bias", "weight")
        )
        assert not report.unexpected and "blocks.0.attn.kv.weight" in report.loaded
        if attention == "kvpos":  # the positional correction starts as plain KV (temperature 1)
            assert float(net.blocks[0].attn.pos_proj.temperature().detach()) == pytest.approx(1.0)


def test_google_npz_vit_into_setr_and_position_resize(tmp_path):
    """Google's .npz: kernels transposed, heads merged in q, k, v order; the 4x4 grid resampled as timm does."""
    w = _google_npz(tmp_path / "vit.npz", depth=2, grid=4, patch=4)
    net = create("setr", "qkv", "tiny", img_size=64)  # 16 x 16 tokens
    report = load_pretrained(net, tmp_path / "vit.npz")
    assert report.source_format == "google_npz" and not report.missing and not report.unexpected
    sd = {k: v for k, v in net.state_dict().items()}
    a = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
    q, k, v = (torch.from_numpy(w[f"{a}{n}/kernel"]).reshape(D, D).t() for n in ("query", "key", "value"))
    torch.testing.assert_close(sd["blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    bias = torch.cat([torch.from_numpy(w[f"{a}{n}/bias"]).reshape(-1) for n in ("query", "key", "value")])
    torch.testing.assert_close(sd["blocks.1.attn.qkv.bias"], bias)
    torch.testing.assert_close(
        sd["blocks.1.attn.out_proj.weight"], torch.from_numpy(w[a + "out/kernel"]).reshape(D, D).t()
    )
    dense = torch.from_numpy(w["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"])
    torch.testing.assert_close(sd["blocks.0.mlp.linear1.weight"], dense.t())
    torch.testing.assert_close(
        sd["patch_embedding.patch_embeddings.weight"], torch.from_numpy(w["embedding/kernel"]).permute(3, 2, 0, 1)
    )
    pos = torch.from_numpy(w["Transformer/posembed_input/pos_embedding"])
    torch.testing.assert_close(sd["cls_position"], pos[:, :1])
    grid = pos[:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(sd["patch_embedding.position_embeddings"], expected.flatten(2).transpose(1, 2))
    assert report.resized["patch_embedding.position_embeddings"] == "grid 4x4 -> 16x16"
    assert sorted(report.ignored) == ["head/bias", "head/kernel"]


def test_google_r50_vit_npz_into_transunet(tmp_path):
    """R50+ViT-B/16 layout (conv_root, gn_root, blockS/unitU/...): every TransUNet encoder tensor is filled."""
    hybrid = {"width": 8, "units": (1, 1, 1)}  # TransUNet's tiny preset
    w = _google_npz(tmp_path / "r50.npz", depth=2, grid=4, patch=1, hybrid=hybrid)
    net = create("transunet", "qkv", "tiny", img_size=64)
    # the tiny TransUNet has 4 heads; Google's layout stores (D, heads, head_dim): rewrite the attention to 4 heads
    for i in range(2):
        a = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            w[f"{a}{n}/kernel"] = w[f"{a}{n}/kernel"].reshape(D, 4, D // 4)
            w[f"{a}{n}/bias"] = w[f"{a}{n}/bias"].reshape(4, D // 4)
        w[a + "out/kernel"] = w[a + "out/kernel"].reshape(4, D // 4, D)
    np.savez(tmp_path / "r50.npz", **w)
    report = load_pretrained(net, tmp_path / "r50.npz")  # strict: nothing missing or unused
    sd = net.state_dict()
    assert report.encoder_fraction == 1.0
    hwio = {k: torch.from_numpy(v).permute(3, 2, 0, 1) for k, v in w.items() if v.ndim == 4}
    torch.testing.assert_close(sd["resnet.root.0.weight"], hwio["conv_root/kernel"])
    torch.testing.assert_close(sd["resnet.root.1.weight"], torch.from_numpy(w["gn_root/scale"]))
    torch.testing.assert_close(sd["resnet.stage2.0.shortcut.0.weight"], hwio["block2/unit1/conv_proj/kernel"])
    torch.testing.assert_close(sd["resnet.stage3.0.shortcut.1.bias"], torch.from_numpy(w["block3/unit1/gn_proj/bias"]))
    torch.testing.assert_close(sd["resnet.stage1.0.conv2.weight"], hwio["block1/unit1/conv2/kernel"])
    torch.testing.assert_close(sd["resnet.stage1.0.gn3.weight"], torch.from_numpy(w["block1/unit1/gn3/scale"]))
    torch.testing.assert_close(sd["patch_embedding.patch_embeddings.weight"], hwio["embedding/kernel"])
    torch.testing.assert_close(sd["encoder_norm.weight"], torch.from_numpy(w["Transformer/encoder_norm/scale"]))
    pos = torch.from_numpy(w["Transformer/posembed_input/pos_embedding"])
    torch.testing.assert_close(sd["patch_embedding.position_embeddings"], pos[:, 1:])  # class-token row dropped
    assert any("class-token position" in k for k in report.ignored)


def test_monai_unetr_2d_exact_and_3d_reduced(tmp_path):
    """MONAI UNETR weights: 2D ones load unchanged; 3D ones sum the kernel's third axis, keep the middle grid slice."""
    from monai.networks.nets import UNETR

    kw = {"feature_size": 4, "hidden_size": D, "mlp_dim": MLP, "num_heads": HEADS, "qkv_bias": True}
    torch.manual_seed(0)
    src2 = UNETR(3, 3, (64, 64), spatial_dims=2, **{**kw, "feature_size": 8})  # another decoder: not our twin
    torch.save(src2.state_dict(), tmp_path / "u2.pt")
    net = create("unetr", "kv", "tiny", img_size=64)
    report = load_pretrained(net, tmp_path / "u2.pt")
    assert report.source_format == "monai_vit" and report.encoder_fraction == 1.0
    s2 = src2.state_dict()
    assert torch.equal(net.vit.blocks[3].attn.kv.weight, s2["vit.blocks.3.attn.qkv.weight"][D:])
    assert torch.equal(net.vit.norm.weight, s2["vit.norm.weight"])
    assert any(k.startswith("decoder2.") for k in report.ignored)  # the decoder is not the encoder

    src3 = UNETR(1, 3, (64, 64, 64), **kw)  # 3D, one channel
    torch.save(src3.state_dict(), tmp_path / "u3.pt")
    net = create("unetr", "qkv", "tiny", img_size=64, in_channels=3)
    report = load_pretrained(net, tmp_path / "u3.pt")
    s3 = src3.state_dict()
    kernel = s3["vit.patch_embedding.patch_embeddings.weight"].sum(-1)  # (D, 1, 16, 16)
    torch.testing.assert_close(net.vit.patch_embedding.patch_embeddings.weight, kernel.repeat(1, 3, 1, 1) / 3)
    pos = s3["vit.patch_embedding.position_embeddings"].reshape(1, 4, 4, 4, D)[:, :, :, 2].reshape(1, 16, D)
    torch.testing.assert_close(net.vit.patch_embedding.position_embeddings, pos)
    assert "input channels 1 -> 3" in report.resized["vit.patch_embedding.patch_embeddings.weight"]


def test_monai_swin_ssl_3d_into_kv_swin_unetr(tmp_path):
    """SwinUNETR self-supervised layout (module.*, mlp.fc1, 3D) into a 2D KV SwinUNETR."""
    from monai.networks.nets import SwinUNETR

    kw = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 2}
    torch.manual_seed(0)
    src = SwinUNETR(1, 3, spatial_dims=3, **kw)
    ssl = {
        "module." + k[len("swinViT.") :].replace(".mlp.linear", ".mlp.fc"): v
        for k, v in src.state_dict().items()
        if k.startswith("swinViT.")
    }
    ssl["module.rotation_head.weight"] = torch.zeros(4, 768)  # a self-supervised head: ignored
    torch.save({"state_dict": ssl}, tmp_path / "ssl.pt")
    assert detect_format(read_state(tmp_path / "ssl.pt")) == "monai_swin"
    net = create("swin_unetr", "kv", "tiny", img_size=64, in_channels=1)
    report = load_pretrained(net, tmp_path / "ssl.pt")
    s = {k[len("module.") :]: v for k, v in ssl.items()}
    vit = net.swinViT
    attn = vit.layers2[0].blocks[0].attn
    assert torch.equal(attn.kv.weight, s["layers2.0.blocks.0.attn.qkv.weight"][24:])
    assert torch.equal(attn.proj.weight, s["layers2.0.blocks.0.attn.proj.weight"])
    assert torch.equal(vit.layers2[0].blocks[0].mlp.linear1.weight, s["layers2.0.blocks.0.mlp.fc1.weight"])
    table3 = s["layers1.0.blocks.0.attn.relative_position_bias_table"].reshape(3, 3, 3, -1)[:, :, 1]
    torch.testing.assert_close(vit.layers1[0].blocks[0].attn.relative_position_bias_table, table3.reshape(9, -1))
    torch.testing.assert_close(vit.patch_embed.proj.weight, s["patch_embed.proj.weight"].sum(-1))
    # merging: 2D neighbour a + 2b (x offset a, y offset b) from 3D neighbours 4a + 2b + {0, 1}
    w3 = s["layers1.0.downsample.reduction.weight"].reshape(24, 8, 12)
    w2 = vit.layers1[0].downsample.reduction.weight.reshape(24, 4, 12)
    for a in range(2):
        for b in range(2):
            torch.testing.assert_close(w2[:, a + 2 * b], w3[:, 4 * a + 2 * b] + w3[:, 4 * a + 2 * b + 1])
    assert len(report.dropped) == 8 and "rotation_head.weight" in report.ignored


def test_swin_unetr_2d_state_dict_exact(tmp_path):
    """A 2D SwinUNETR's swinViT.* keys load unchanged into a QKV SwinUNETR (strict, every tensor equal)."""
    torch.manual_seed(1)
    src = create("swin_unetr", "qkv", "tiny", img_size=64)
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith("swinViT.")}, tmp_path / "s.pt")
    net = create("swin_unetr", "qkv", "tiny", img_size=64)
    load_pretrained(net, tmp_path / "s.pt")
    for k, v in src.state_dict().items():
        if k.startswith("swinViT."):
            assert torch.equal(net.state_dict()[k], v), k


def test_single_channel_target_sums_rgb(tmp_path):
    """1-channel input: the RGB patch kernel is summed over its channels (timm's adapt_input_conv)."""
    vit = _timm_vit(32, 4, depth=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    net = create("setr", "qkv", "tiny", img_size=32, in_channels=1)
    report = load_pretrained(net, tmp_path / "vit.pth")
    expected = vit.patch_embed.proj.weight.detach().sum(1, keepdim=True)
    torch.testing.assert_close(net.patch_embedding.patch_embeddings.weight, expected)
    assert report.resized["patch_embedding.patch_embeddings.weight"] == "input channels 3 -> 1"


def test_errors_name_the_file_and_keys(tmp_path):
    net = create("setr", "qkv", "tiny", img_size=32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedError, match="do not exist"):
        load_pretrained(net, tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="bad.pth"):
        load_pretrained(net, tmp_path / "bad.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(PretrainedError, match="unknown weights layout.*foo.weight"):
        load_pretrained(net, tmp_path / "foreign.pth")
    # a ViT with 1 of SETR's 2 layers: strict names the missing keys; strict=False loads, with the report
    torch.save(_timm_vit(32, 4, depth=1).state_dict(), tmp_path / "short.pth")
    with pytest.raises(PretrainedError, match=r"short.pth.*missing blocks\.1\."):
        load_pretrained(net, tmp_path / "short.pth")
    with pytest.raises(PretrainedError, match="fill only"):
        load_pretrained(net, tmp_path / "short.pth", strict=False, min_fraction=0.9)
    for k, v in net.state_dict().items():  # nothing was written by the refused loads
        assert torch.equal(v, before[k]), k
    report = load_pretrained(net, tmp_path / "short.pth", strict=False)
    assert "blocks.1.attn.qkv.weight" in report.missing and 0.5 < report.encoder_fraction < 1.0
    assert "missing" in report.summary() and "short.pth" in str(report)
    # Swin weights do not map onto a ViT network
    torch.save(create("swin_unetr", "qkv", "tiny", img_size=64).state_dict(), tmp_path / "swin.pt")
    with pytest.raises(PretrainedError, match="monai_swin weights, which do not map onto SETR"):
        load_pretrained(net, tmp_path / "swin.pt")
    with pytest.raises(PretrainedError, match="no pretrained-weights mapping for CvTUNet"):
        load_pretrained(create("cvt", "qkv", "tiny", img_size=64), tmp_path / "short.pth")


def test_timm_swin_state_dict_into_kv_timm_backbone(tmp_path):
    """A timm Swin state dict in a KV timm-backbone segmenter: K, V rows and proj equal the file's, Q dropped."""
    src = create("swin", "qkv", "tiny").backbone.state_dict()
    torch.save(src, tmp_path / "swin.pth")
    net = create("swin", "kv", "tiny")
    report = load_pretrained(net, tmp_path / "swin.pth")
    assert report.source_format == "timm" and not report.missing and report.encoder_fraction == 1.0
    state = net.state_dict()
    for key, qkv in src.items():
        if key.endswith("attn.qkv.weight"):
            dim = qkv.shape[1]
            kv = next(
                v for k, v in state.items() if k.startswith("backbone." + key[: -len("qkv.weight")]) and "kv" in k
            )
            assert torch.equal(kv, qkv[dim:]), key
            proj = key.replace("qkv.weight", "proj.weight")
            assert torch.equal(state["backbone." + proj], src[proj])
    assert len(report.dropped) == 2 * sum(k.endswith("attn.qkv.weight") for k in src)
