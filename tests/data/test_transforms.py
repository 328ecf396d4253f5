"""2.5D slice transforms, gain-robust scaling and the datalist helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from kvmonai.data.datalist import expand_slices, load_datalist, split_fold
from kvmonai.data.prepare import kaggle_affine
from kvmonai.portable import transforms


def _volume(c: int = 1, h: int = 4, w: int = 5, d: int = 6) -> MetaTensor:
    """Voxel value = 100 * channel + slice index, so every output can be checked by hand."""
    t = torch.arange(d, dtype=torch.float32).expand(c, h, w, d) + 100 * torch.arange(c).view(c, 1, 1, 1)
    return MetaTensor(t.clone(), affine=torch.as_tensor(kaggle_affine((1.5, 1.5, 3.0))))


def test_neighbour_indices_clamp():
    assert transforms.neighbour_indices(0, 6) == [0, 0, 2]
    assert transforms.neighbour_indices(1, 6) == [0, 1, 3]
    assert transforms.neighbour_indices(5, 6) == [3, 5, 5]
    assert transforms.neighbour_indices(2, 3, (-1, 0, 1)) == [1, 2, 2]
    with pytest.raises(ValueError, match="outside"):
        transforms.neighbour_indices(6, 6)
    with pytest.raises(ValueError, match="offsets"):
        transforms.neighbour_indices(0, 6, ())


def test_extract_slice_with_neighbours_and_affine():
    vol = _volume(c=2)
    out = transforms.ExtractSlice((-2, 0, 2))(vol, 1)
    assert tuple(out.shape) == (6, 4, 5)
    # channel-major: (c0 at z-2, c0 at z, c0 at z+2, c1 at ...), clamped at slice 0
    assert out[:, 0, 0].tolist() == [0, 1, 3, 100, 101, 103]
    assert isinstance(out, MetaTensor) and out.meta["slice"] == 1
    np.testing.assert_allclose(out.affine, [[0, -1.5, 0], [-1.5, 0, 0], [0, 0, 1]])
    label = transforms.ExtractSlice()(torch.zeros(3, 4, 5, 6), 5)
    assert tuple(label.shape) == (3, 4, 5)
    with pytest.raises(ValueError, match="channel-first volume"):
        transforms.ExtractSlice()(torch.zeros(4, 5, 6), 0)


def test_neighbour_channels_agree_with_extract_slice():
    vol = _volume(c=2)
    stacked = transforms.NeighbourChannels((-2, 0, 2))(vol)
    assert tuple(stacked.shape) == (6, 4, 5, 6)
    for z in range(6):
        torch.testing.assert_close(stacked[..., z].as_tensor(), transforms.ExtractSlice((-2, 0, 2))(vol, z).as_tensor())
    assert transforms.NeighbourChannelsd("image")({"image": vol})["image"].shape[0] == 6


def test_sampler_draws_positive_slices_reproducibly():
    data = {"image": _volume(), "label": torch.zeros(3, 4, 5, 6), "nonempty_slices": [2, 3]}
    sampler = transforms.RandSliceSamplerd(["image", "label"], num_samples=8, pos_fraction=1.0)
    sampler.set_random_state(0)
    out = sampler(data)
    assert len(out) == 8 and {o["slice"] for o in out} <= {2, 3}
    assert out[0]["image"] is data["image"]  # shallow copies, no volume duplicated
    sampler.set_random_state(0)
    assert [o["slice"] for o in sampler(data)] == [o["slice"] for o in out]
    # without the datalist field the label decides
    label = torch.zeros(3, 4, 5, 6)
    label[1, 0, 0, 4] = 1
    only = transforms.RandSliceSamplerd("image", num_samples=5, pos_fraction=1.0)({"image": _volume(), "label": label})
    assert {o["slice"] for o in only} == {4}
    uniform = transforms.RandSliceSamplerd("image", num_samples=50, pos_fraction=None)
    uniform.set_random_state(1)
    assert {o["slice"] for o in uniform({"image": _volume()})} == set(range(6))
    with pytest.raises(KeyError, match="pos_fraction=None"):
        transforms.RandSliceSamplerd("image", pos_fraction=0.5, label_key=None)({"image": _volume()})
    with pytest.raises(ValueError, match="pos_fraction"):
        transforms.RandSliceSamplerd("image", pos_fraction=1.5)


def test_pipeline_on_prepared_volumes(prepared_root):
    items = load_datalist(prepared_root / "datalist.json")
    pipeline = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            transforms.RandSliceSamplerd(["image", "label"], num_samples=3, pos_fraction=1.0),
            transforms.ExtractSliced("image", offsets=(-2, 0, 2)),
            transforms.ExtractSliced("label"),
            transforms.ScaleIntensityRobustd("image"),
        ]
    )
    pipeline.set_random_state(0)
    item = next(i for i in items if i["shape"][:2] == [310, 360])
    samples = pipeline(item)
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (3, 310, 360) and tuple(s["label"].shape) == (3, 310, 360)
        assert s["slice"] in item["nonempty_slices"] and s["label"].sum() > 0
        assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
    with pytest.raises(KeyError, match="RandSliceSamplerd"):
        transforms.ExtractSliced("image")({"image": _volume()})


def test_transforms_instantiate_from_a_bundle_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "t": {
                "_target_": "Compose",
                "transforms": [
                    {
                        "_target_": "kvmonai.data.RandSliceSamplerd",
                        "keys": ["image"],
                        "num_samples": 2,
                        "pos_fraction": None,
                    },
                    {"_target_": "kvmonai.data.ExtractSliced", "keys": "image", "offsets": [-2, 0, 2]},
                    {"_target_": "kvmonai.data.ScaleIntensityRobustd", "keys": "image", "per_slice": True},
                ],
            }
        }
    )
    out = parser.get_parsed_content("t")({"image": _volume()})
    assert len(out) == 2 and tuple(out[0]["image"].shape) == (3, 4, 5)


def test_scaling_is_gain_invariant():
    rng = np.random.default_rng(0)
    vol = torch.as_tensor(rng.gamma(2.0, 150.0, size=(1, 16, 16, 5)))
    vol[..., 2] = 0  # an empty slice
    for per_slice in (False, True):
        t = transforms.ScaleIntensityRobust(per_slice=per_slice)
        a, b = t(vol), t(vol * 37.0)
        torch.testing.assert_close(a, b)
        assert torch.isfinite(a).all() and float(a.min()) == 0.0 and float(a.max()) == 1.0
    per = transforms.ScaleIntensityRobust(per_slice=True)(vol)
    assert float(per[..., 2].abs().max()) == 0.0  # constant slice -> b_min, no NaN
    assert torch.allclose(per[..., 0].max(), torch.tensor(1.0))
    # per slice: a slice with 10x the gain of its neighbours gets the same scale as them
    mixed = vol.clone()
    mixed[..., 1] *= 10
    torch.testing.assert_close(transforms.ScaleIntensityRobust(per_slice=True)(mixed), per)
    scale = transforms.ScaleIntensityRobustd("image", lower=0, upper=100, b_min=-1, b_max=1)
    out = scale({"image": _volume()})["image"]
    assert isinstance(out, MetaTensor) and float(out.min()) == -1 and float(out.max()) == 1
    with pytest.raises(ValueError, match="lower < upper"):
        transforms.ScaleIntensityRobust(lower=90, upper=10)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_scaling_is_the_exact_percentile_formula(dtype):
    """The bundles' intensity step, on a float and a uint16 volume: exact percentiles (see the class docstring on
    why MONAI's ScaleIntensityRangePercentiles, with torch.quantile in float32 on small volumes, is not used)."""
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 300.0, size=(1, 64, 64, 20)).astype(dtype)
    out = transforms.ScaleIntensityRobustd("image")({"image": MetaTensor(torch.as_tensor(vol))})["image"]
    lo, hi = np.percentile(vol.astype(np.float64), [0.5, 99.5])
    expected = np.clip((vol.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(transforms.ScaleIntensityRobust()(vol).numpy(), expected, atol=1e-6, rtol=0)  # numpy in


def test_expand_slices_and_split_fold():
    items = [
        {"image": "a", "label": "la", "case": 1, "fold": 0, "num_slices": 4, "nonempty_slices": [1, 2]},
        {"image": "b", "label": "lb", "case": 2, "fold": 1, "num_slices": 3, "nonempty_slices": []},
    ]
    slices = expand_slices(items)
    assert [(s["image"], s["slice"], s["nonempty"]) for s in slices] == [
        ("a", 0, False),
        ("a", 1, True),
        ("a", 2, True),
        ("a", 3, False),
        ("b", 0, False),
        ("b", 1, False),
        ("b", 2, False),
    ]
    assert "nonempty_slices" not in slices[0]
    assert [s["slice"] for s in expand_slices(items, nonempty_only=True)] == [1, 2]
    train, val = split_fold(items, 1)
    assert [i["case"] for i in train] == [1] and [i["case"] for i in val] == [2]
    with pytest.raises(ValueError, match="no datalist entry belongs to fold 4"):
        split_fold(items, 4)
    with pytest.raises(ValueError, match="num_slices"):
        expand_slices([{"image": "x"}])
