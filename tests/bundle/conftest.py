"""Fixtures for bundle tests: a tiny prepared synthetic dataset and throw-away copies of the bundles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmonai.data.prepare import prepare_dataset
from kvmonai.data.synth import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
#: the tiny settings every bundle test runs with (the configs' defaults are the paper sizes)
_TINY = {
    "preset": "tiny",
    "img_size": 64,
    "num_workers": 0,
    "slices_per_volume": 4,
    "volumes_per_batch": 2,
    "max_epochs": 1,
}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset: 5 cases x 2 days x 12 slices at 1/4 scale; returns the datalist path.

    Every fold holds one case, i.e. two volumes (two processes of a distributed run get one validation volume each).
    """
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root / "raw", cases=5, seed=0, days=2, slices=12, scale=0.25, progress=False)
    summary = prepare_dataset(root / "raw", root / "prepared", progress=False)
    return Path(summary.datalist)


@pytest.fixture
def tiny() -> dict:
    """Overrides that shrink a bundle run to seconds (the configs' defaults are the paper sizes)."""
    return dict(_TINY)


@pytest.fixture
def copy_bundle():
    """``copy(name, dest)``: copy bundles/<name> to ``dest/<name>``, so runs and weights stay out of the repo."""

    def copy(name: str, dest: Path) -> Path:
        target = dest / name
        shutil.copytree(BUNDLES / name, target, ignore=shutil.ignore_patterns("runs", "models", "predictions", "eval"))
        return target

    return copy


@pytest.fixture
def fit_bundle():
    """``fit(root, arch, image, label, size, steps=120)``: fit a tiny KV network to one volume, through the bundle's
    own preprocessing, and save it as the bundle's ``models/model.pt``.

    Over-fitting one volume takes seconds and yields a network with confident and borderline pixels alike, which is
    what a precision or runtime change can flip; a network that predicts nothing would make a comparison vacuous.
    """

    def fit(root: Path, arch: str, image: Path, label: Path, size: int, steps: int = 120) -> None:
        import torch
        from monai.bundle import ConfigParser
        from monai.losses import DiceFocalLoss
        from monai.transforms import LoadImage, Resize

        from kvmonai.networks import create, save_atomic

        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        parser.update({"preset": "tiny", "img_size": size, "bundle_root": str(root)})
        x = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"].as_tensor()
        y = LoadImage(image_only=True, ensure_channel_first=False)(str(label)).as_tensor().permute(3, 0, 1, 2).float()
        y = Resize((size, size, -1), mode="nearest")(y).as_tensor()
        x, y = x.permute(3, 0, 1, 2).contiguous(), y.permute(3, 0, 1, 2).contiguous()  # slices as the batch
        torch.manual_seed(0)
        net = create(arch, "kv", "tiny", img_size=size)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        loss_fn = DiceFocalLoss(sigmoid=True, batch=True, gamma=0.0)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        save_atomic(net.state_dict(), root / "models" / "model.pt")

    return fit
