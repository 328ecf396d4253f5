"""The inference bundles' fast path (bf16 autocast, channels-last, folded BatchNorms) keeps the accuracy of fp32."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.metrics import pooled_dice

SIZE = 64


@pytest.mark.slow
@pytest.mark.parametrize("name", ["setr_kv"])
def test_fast_path_dice_within_0005_of_fp32(name, prepared, copy_bundle, fit_bundle, tmp_path):
    root = copy_bundle(name, tmp_path)
    volume = next(v for v in json.loads(Path(prepared).read_text())["training"] if v["fold"] == 0)
    image, label = Path(prepared).parent / volume["image"], Path(prepared).parent / volume["label"]
    fit_bundle(root, name.rsplit("_", 1)[0], image, label, SIZE)

    settings = {
        "fp32": {"precision": "fp32", "channels_last": False, "fuse": False},
        # forced bf16: a CI machine without native bf16 would fall back to fp32 under "auto"
        "fast": {"precision": "bf16", "channels_last": True, "fuse": True},
    }
    truth = np.asarray(nib.load(label).dataobj)
    dice, masks = {}, {}
    for setting, options in settings.items():
        out = tmp_path / setting
        wf = bundle_workflow(
            root, ["inference.json"], "infer", logging=False, bundle_root=str(root), preset="tiny", img_size=SIZE,
            input_path=str(image), output_dir=str(out), **options,
        )  # fmt: skip
        wf.run()
        wf.finalize()
        masks[setting] = np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj)
        dice[setting] = pooled_dice(masks[setting], truth)
    assert dice["fp32"] > 0.25, f"the fitted network should segment much of its volume: {dice}"
    assert abs(dice["fast"] - dice["fp32"]) <= 0.005, dice
    assert (masks["fast"] != masks["fp32"]).mean() < 0.01  # the same mask up to a few borderline pixels
