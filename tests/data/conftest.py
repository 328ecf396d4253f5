"""Shared fixtures of the data tests: a small synthetic Kaggle-layout set, its prepared form, a hand-made set."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kvmonai.data.kaggle import CLASSES, format_slice_filename, slice_id
from kvmonai.data.prepare import prepare_dataset
from kvmonai.data.rle import rle_encode
from kvmonai.data.synth import write_synthetic_dataset


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 cases x 2 days x 8 slices at the real image sizes (all four geometries, one 360x310)."""
    root = tmp_path_factory.mktemp("synth") / "kaggle"
    write_synthetic_dataset(root, cases=3, days=2, slices=8, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def prepared_root(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth_root`` after ``prepare`` (read-only for the tests)."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_dataset(synth_root, out, progress=False)
    return out


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of ``synth_root`` that a test may damage."""
    dst = tmp_path / "kaggle"
    shutil.copytree(synth_root, dst)
    return dst


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


@pytest.fixture
def tiny_kaggle(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a hand-made one-scan dataset: case 7 day 3, ``depth`` slices of ``width`` x ``height``."""

    def make(width: int = 12, height: int = 10, depth: int = 3, spacing: float = 1.5) -> Path:
        root = tmp_path / "tiny"
        scans = root / "train" / "case7" / "case7_day3" / "scans"
        rng = np.random.default_rng(0)
        lines = ["id,class,segmentation"]
        for z in range(1, depth + 1):
            img = rng.integers(0, 4000, size=(height, width), dtype=np.uint16)
            write_png(scans / format_slice_filename(z, width, height, spacing, spacing), img)
            for k, cls in enumerate(CLASSES):
                mask = np.zeros((height, width), dtype=bool)
                if z == 2:
                    mask[k : k + 3, 2 * k : 2 * k + 4] = True
                lines.append(f"{slice_id(7, 3, z)},{cls},{rle_encode(mask)}")
        (root / "train.csv").write_text("\n".join(lines) + "\n")
        return root

    return make


@pytest.fixture
def mr_series(tmp_path):
    """Four slices of pydicom's real MR_small.dcm at increasing z (0.8 mm steps), written in shuffled file order;
    returns the folder and the original pixels (each slice's pixel [0, 0] is set to 10 * its index)."""
    import copy

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds0 = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    series, folder = generate_uid(), tmp_path / "series"
    folder.mkdir()
    for i in range(4):
        ds = copy.deepcopy(ds0)
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), series, i + 1
        x, y, z = (float(v) for v in ds0.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.8 * i]
        arr = ds0.pixel_array.copy()
        arr[0, 0] = 10 * i  # marks the slice
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"im{(i * 3) % 4}.dcm")
    return folder, ds0.pixel_array
