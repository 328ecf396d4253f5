"""Inference rewrites keep the network's function; autocast precision choice; the fast slice inferer."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer

from kvmonai import inference
from kvmonai.networks import STUDY_ARCHITECTURES, create


def _trained_looking(net: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("arch", STUDY_ARCHITECTURES)
def test_optimize_for_inference_keeps_the_function(arch):
    torch.manual_seed(0)
    net = _trained_looking(create(arch, "kv", "tiny", img_size=64))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = net(x)
    inference.optimize_for_inference(net)
    with torch.inference_mode():
        after = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-4)


def test_rewrites_happen_where_expected():
    setr = _trained_looking(create("setr", "kv", "tiny", img_size=64))
    assert inference.fold_batch_norms(setr) == 2  # the PUP stages: log2(patch size 4) of the tiny preset
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in setr.modules())
    assert inference.inplace_activations(setr) == 2 and inference.inplace_activations(setr) == 0  # the PUP ReLUs, once
    cvt = _trained_looking(create("cvt", "kv", "tiny", img_size=64))
    assert inference.fold_batch_norms(cvt) > 0
    transunet = create("transunet", "kv", "tiny", img_size=64).eval()
    frozen = inference.freeze_for_inference(transunet)
    assert frozen > 0 and not any(hasattr(m, "inference_module") for m in transunet.modules())


def test_bundle_handler_follows_the_fuse_setting():
    """``OptimizeForInference(network, fuse=...)`` takes the inference bundles' ``fuse`` (a string from the CLI)."""
    from kvmonai.bundle import OptimizeForInference

    for fuse, keeps_batch_norms in ((False, True), ("false", True), ("true", False), (True, False)):
        net = _trained_looking(create("setr", "kv", "tiny", img_size=64))
        OptimizeForInference(net, fuse=fuse, channels_last="false")(None)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) is keeps_batch_norms


def test_fold_refuses_training_mode():
    with pytest.raises(ValueError, match="eval"):
        inference.fold_batch_norms(create("setr", "kv", "tiny", img_size=64).train())


def test_autocast_dtype_choices():
    assert inference.autocast_dtype("fp32", "cpu") is None
    assert inference.autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert inference.autocast_dtype("auto", "cpu") is (torch.bfloat16 if inference.cpu_has_fast_bf16() else None)
    with pytest.raises(ValueError, match="CUDA"):
        inference.autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference.autocast_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference.FastSliceInferer(roi_size=(64, 64), precision="half")


def test_boolean_settings_from_the_command_line():
    from kvmonai.utils import as_flag

    assert as_flag("fuse", "false") is False and as_flag("fuse", "True") is True and as_flag("fuse", False) is False
    # MONAI Label requests: the words of distutils' strtobool, and 1/0
    assert [as_flag("pretrained", v) for v in ("y", "T", " on ", 1, "yes")] == [True] * 5
    assert [as_flag("pretrained", v) for v in ("n", "F", "off", 0, "NO")] == [False] * 5
    for bad in ("maybe", None, 2, ""):
        with pytest.raises(ValueError, match="multi_gpu must be true or false"):
            as_flag("multi_gpu", bad)
    with pytest.raises(ValueError, match="channels_last must be true or false"):
        inference.FastSliceInferer(roi_size=(64, 64), channels_last="maybe")
    with pytest.raises(ValueError, match="fuse must be true or false"):
        inference.optimize_for_inference(torch.nn.Linear(2, 2), fuse="maybe")


def test_fast_slice_inferer_matches_slice_inferer():
    torch.manual_seed(0)
    net = create("unetr", "kv", "tiny", img_size=64).eval()
    volume = torch.randn(1, 3, 64, 64, 5)
    with torch.inference_mode():
        reference = SliceInferer(roi_size=(64, 64), sw_batch_size=4, spatial_dim=2)(volume, net)
        fp32 = inference.FastSliceInferer(roi_size=(64, 64), sw_batch_size=4, precision="fp32")(volume, net)
        bf16 = inference.FastSliceInferer(roi_size=(64, 64), sw_batch_size=4, precision="bf16")(volume, net)
    torch.testing.assert_close(fp32, reference, atol=1e-5, rtol=1e-5)
    assert bf16.dtype == torch.float32 and bf16.shape == reference.shape
    assert (bf16 - reference).abs().max() < 0.1  # bf16 keeps 8 bits of mantissa
