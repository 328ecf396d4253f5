"""Every architecture/attention pair by name: shapes, channels, determinism, export, training."""

from __future__ import annotations

import math

import pytest
import torch

from kvmonai.networks import STUDY_ARCHITECTURES, attentions_for, create, init_output_bias, pairs

SIZE = 64  # the tiny preset's size; SwinUNETR needs sides divisible by 32 and a >1 pixel bottleneck


def test_fourteen_pairs():
    assert len(pairs()) == 14
    assert attentions_for("swin_unetr") == ("qkv", "kv")
    assert pairs(references=True) == [*pairs(), ("unet", "cnn")]
    with pytest.raises(ValueError, match=r"attention for 'unet' must be one of \('cnn',\)"):
        create("unet", "kv")


@pytest.mark.parametrize(("arch", "attention"), pairs(references=True))
def test_output_prior_sets_the_starting_logits(arch, attention):
    """``output_prior`` reaches the output layer of every network: the mean logit starts at log(p / (1 - p))."""
    torch.manual_seed(0)
    net = create(arch, attention, "tiny", img_size=SIZE, output_prior=0.02).eval()
    with torch.no_grad():
        logits = net(torch.zeros(2, 3, SIZE, SIZE))
    assert logits.mean().item() == pytest.approx(math.log(0.02 / 0.98), abs=0.4)
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\)"):
        init_output_bias(net, 1.0)
    with pytest.raises(ValueError, match="no Conv2d with 7 outputs"):
        init_output_bias(net, 0.1, out_channels=7)


@pytest.mark.parametrize(("arch", "attention"), pairs())
def test_pair_trains_on_random_data(arch, attention, train_losses):
    torch.manual_seed(0)
    net = create(arch, attention, "tiny", in_channels=3, out_channels=3, img_size=SIZE)
    x = torch.randn(4, 3, SIZE, SIZE)
    target = (torch.rand(4, 3, SIZE, SIZE) > 0.7).float()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = train_losses(net, x, target, torch.nn.functional.binary_cross_entropy_with_logits, opt, steps=6)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("arch", STUDY_ARCHITECTURES)
@pytest.mark.parametrize("in_channels", [1, 5])
def test_single_slice_and_25d_inputs(arch, in_channels):
    net = create(arch, "kv", "tiny", in_channels=in_channels, out_channels=3, img_size=SIZE).eval()
    assert net(torch.randn(1, in_channels, SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)


@pytest.mark.parametrize("arch", STUDY_ARCHITECTURES)
def test_deterministic_init_and_trace(arch, tmp_path, assert_same_init):
    a = assert_same_init(lambda: create(arch, "kv", "tiny", img_size=SIZE), seed=7)
    a.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        traced = torch.jit.trace(a, x)
    path = tmp_path / f"{arch}.ts"
    traced.save(str(path))
    torch.testing.assert_close(torch.jit.load(str(path))(x), a(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", STUDY_ARCHITECTURES)
def test_no_parameters_created_in_forward(arch):
    net = create(arch, "kvpos" if arch != "swin_unetr" else "kv", "tiny", img_size=SIZE)
    before = {n: p.data_ptr() for n, p in net.named_parameters()}
    net(torch.randn(1, 3, SIZE, SIZE))
    assert {n: p.data_ptr() for n, p in net.named_parameters()} == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "vit"}, "arch must be one of"),
        ({"arch": "setr", "attention": "qk"}, "must be one of"),
        ({"arch": "setr", "preset": "huge"}, "preset must be one of"),
        ({"arch": "swin_unetr", "attention": "kvpos"}, "relative position bias is kept"),
    ],
)
def test_bad_names(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create(**kwargs)
