"""The inference bundles' fast path (bf16 autocast, channels-last, folded BatchNorms) keeps the accuracy of fp32."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceFocalLoss
from monai.transforms import LoadImage, Resize

from kvmonai.bundle.checkpoint import save_atomic
from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.metrics import pooled_dice
from kvmonai.networks import create

SIZE = 64


def _fit(root: Path, arch: str, image: Path, label: Path, steps: int = 120) -> None:
    """Fit a tiny network to one volume, through the bundle's own preprocessing, and save it as the bundle's model.

    Over-fitting one volume takes seconds and yields a network with confident and borderline pixels alike, which is
    what a precision change can flip; a network that predicts nothing would make the comparison vacuous.
    """
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"preset": "tiny", "img_size": SIZE, "bundle_root": str(root)})
    x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"].as_tensor()
    y = LoadImage(image_only=True, ensure_channel_first=False)(str(label)).as_tensor().permute(3, 0, 1, 2).float()
    y = Resize((SIZE, SIZE, -1), mode="nearest")(y).as_tensor()
    x, y = x.permute(3, 0, 1, 2).contiguous(), y.permute(3, 0, 1, 2).contiguous()  # slices as the batch
    torch.manual_seed(0)
    net = create(arch, "kv", "tiny", img_size=SIZE)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = DiceFocalLoss(sigmoid=True, batch=True, gamma=0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    save_atomic(net.state_dict(), root / "models" / "model.pt")


@pytest.mark.parametrize("name", ["setr_kv"])
def test_fast_path_dice_within_0005_of_fp32(name, prepared, copy_bundle, tmp_path):
    root = copy_bundle(name, tmp_path)
    volume = next(v for v in json.loads(Path(prepared).read_text())["training"] if v["fold"] == 0)
    image, label = Path(prepared).parent / volume["image"], Path(prepared).parent / volume["label"]
    _fit(root, name.rsplit("_", 1)[0], image, label)

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
