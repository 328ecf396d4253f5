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
