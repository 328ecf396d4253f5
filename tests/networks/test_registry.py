"""The architecture registry is the one list of networks: everything else derives from it."""

from __future__ import annotations

import pytest
import torch

from kvmonai.networks import (
    ARCHITECTURE_REGISTRY,
    ATTENTION_REGISTRY,
    EXTRA_ARCHITECTURES,
    PRESET_IMG_SIZE,
    PRESETS,
    REFERENCES,
    STUDY_ARCHITECTURES,
    Architecture,
    attentions_for,
    create,
    lookup,
    network_class,
    pairs,
)
from kvmonai.utils import check_option


def test_lists_derive_from_the_registry():
    assert STUDY_ARCHITECTURES == ("setr", "transunet", "cvt", "unetr", "swin_unetr")
    assert REFERENCES == ("unet",)
    assert EXTRA_ARCHITECTURES == ("crossvit", "swin", "nextvit")  # timm backbones, outside the default study
    assert set(ARCHITECTURE_REGISTRY) == set(STUDY_ARCHITECTURES) | set(REFERENCES) | set(EXTRA_ARCHITECTURES)
    assert len(pairs()) == 14 and len(pairs(references=True)) == 15
    assert pairs(references=True, extra=True) == [*pairs(references=True), *pairs(EXTRA_ARCHITECTURES)]
    assert len(pairs(EXTRA_ARCHITECTURES)) == 6
    for name, record in ARCHITECTURE_REGISTRY.items():
        assert record.name == name
        assert attentions_for(name) == record.attentions
        assert network_class(name) is record.network_class
        assert set(record.presets) == set(PRESETS)  # every network module sizes every preset
        assert all(record.img_size(p) == PRESET_IMG_SIZE[p] for p in PRESETS)
        assert record.title and record.reference and record.short


@pytest.mark.parametrize("name", list(ARCHITECTURE_REGISTRY))
def test_every_record_builds_each_of_its_attentions(name):
    for attention in lookup(name).attentions:
        net = create(name, attention, "tiny", img_size=64)
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_a_new_record_is_all_the_factory_needs(monkeypatch):
    """An architecture added as one record (here: the UNet module under another name) is built by create()."""
    import kvmonai.networks.registry as registry

    extra = Architecture(
        "unet_copy", "kvmonai.networks.nets.unet:UNetCNN", ("cnn",), title="t", short="s", reference="r"
    )
    monkeypatch.setattr(registry, "ARCHITECTURE_REGISTRY", {**registry.ARCHITECTURE_REGISTRY, "unet_copy": extra})
    net = create("unet_copy", "cnn", "tiny", img_size=32)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_records_reject_unknown_attentions_and_names():
    with pytest.raises(ValueError, match=r"attention of 'x' must be one of \('qkv', 'kv', 'kvpos', 'cnn'\)"):
        Architecture("x", "m:C", ("qk",), title="t", short="s", reference="r")
    with pytest.raises(ValueError, match="arch must be one of"):
        lookup("vit")
    with pytest.raises(ValueError, match="preset must be one of"):
        lookup("setr").img_size("huge")
    assert [a.title for a in ATTENTION_REGISTRY.values()] == ["QKV", "KV", "KV+Pos", "no"]


def test_check_option_names_the_argument_and_the_fix():
    assert check_option("kv_mode", "full_res", ("shared_stride1", "full_res")) == "full_res"
    with pytest.raises(ValueError, match=r"^kv_mode must be one of \('a', 'b'\), got 'c'\. Use a\.$"):
        check_option("kv_mode", "c", ("a", "b"), "Use a.")
