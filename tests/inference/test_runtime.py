"""The OpenVINO runtime: same outputs as torch, converted once per fingerprint, never a stale model."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from kvmonai.inference import RuntimeNetwork, network_fingerprint, openvino_precision
from kvmonai.networks import create

pytest.importorskip("openvino")


@pytest.fixture
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("setr", "kvpos", "tiny", img_size=32).eval()


def test_matches_torch_and_pads_the_last_batch(net, tmp_path):
    runtime = RuntimeNetwork(net, "openvino", "fp32", batch_size=4, cache_dir=tmp_path)
    x = torch.randn(6, 3, 32, 32)  # one full batch of 4 and a padded one of 2
    with torch.no_grad():
        expected = net(x)
        got = runtime(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runtime(x[:1]), expected[:1], rtol=1e-4, atol=1e-4)


def test_cache_converts_once_and_again_for_changed_weights(net, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kvmonai.inference.runtime")
    x = torch.randn(2, 3, 32, 32)
    first = RuntimeNetwork(net, "openvino", "fp32", batch_size=2, cache_dir=tmp_path)
    first(x)
    assert first.converted and len(list(tmp_path.iterdir())) == 1
    second = RuntimeNetwork(net, "openvino", "fp32", batch_size=2, cache_dir=tmp_path)
    second(x)
    assert not second.converted and second.model_path == first.model_path
    assert "using the cached model" in caplog.text
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # new weights: a new fingerprint, a new conversion
    third = RuntimeNetwork(net, "openvino", "fp32", batch_size=2, cache_dir=tmp_path)
    torch.testing.assert_close(third(x), net(x).detach(), rtol=1e-4, atol=1e-4)
    assert third.converted and len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_fingerprint_covers_weights_structure_and_shape(net):
    base = network_fingerprint(net, (2, 3, 32, 32))
    assert base == network_fingerprint(net, (2, 3, 32, 32))
    assert base != network_fingerprint(net, (4, 3, 32, 32))
    other = create("setr", "kv", "tiny", img_size=32).eval()
    assert base != network_fingerprint(other, (2, 3, 32, 32))
    with torch.no_grad():
        next(net.parameters()).add_(0.5)
    assert base != network_fingerprint(net, (2, 3, 32, 32))


def test_int8_is_refused_without_or_with_a_stale_record(net, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    runtime = RuntimeNetwork(net, "openvino", "int8", batch_size=2, cache_dir=tmp_path, int8_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="kvmonai quantize"):
        runtime(x)
    (tmp_path / "model_int8.xml").write_text("<net/>")
    (tmp_path / "model_int8.json").write_text(json.dumps({"fingerprint": "0" * 64}))
    with pytest.raises(ValueError, match="quantised from other weights"):
        runtime(x)


def test_bad_settings_are_named():
    net = torch.nn.Identity()
    with pytest.raises(ValueError, match="runtime must be one of"):
        RuntimeNetwork(net, "onnx")
    with pytest.raises(ValueError, match="set runtime to 'openvino'"):
        RuntimeNetwork(net, "torch", "int8")
    with pytest.raises(ValueError, match="fp16' is for GPUs"):
        RuntimeNetwork(net, "openvino", "fp16")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RuntimeNetwork(net, "openvino", "fp32", batch_size=0)
    hint, why = openvino_precision("auto")
    assert hint in ("bf16", "f32") and ("native" in why)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transunet", "cvt", "unetr", "swin_unetr", "unet"])
def test_every_architecture_converts_and_agrees(arch, tmp_path):
    """Each network converts through torch.export and matches torch (SETR is covered above)."""
    from kvmonai.networks import attentions_for

    torch.manual_seed(0)
    attention = "kvpos" if "kvpos" in attentions_for(arch) else attentions_for(arch)[-1]
    net = create(arch, attention, "tiny", img_size=64).eval()
    runtime = RuntimeNetwork(net, "openvino", "fp32", batch_size=2, cache_dir=tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), net(x), rtol=1e-3, atol=1e-4)
