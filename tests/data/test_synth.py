"""The synthetic stand-in: exact layout, real counts, plausible anatomy, determinism, CLI."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kvmonai.cli import main
from kvmonai.data.kaggle import CLASSES, KaggleDataset
from kvmonai.data.synth import (
    DAYS_PER_CASE,
    GEOMETRIES,
    ScanSpec,
    generate_scan,
    plan_dataset,
    write_synthetic_dataset,
)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_full_plan_matches_the_real_counts():
    specs = plan_dataset(cases=85, seed=0)
    assert len(specs) == 274 and sum(s.depth for s in specs) == 38496
    geo = Counter((s.width, s.height, s.spacing, s.depth) for s in specs)
    assert geo == {(g.width, g.height, g.spacing, g.depth): g.count for g in GEOMETRIES}
    per_case = Counter(s.case for s in specs)
    assert Counter(per_case.values()) == DAYS_PER_CASE
    ids = sorted(per_case)
    assert len(ids) == 85 and ids[-1] - ids[0] + 1 > 85  # non-contiguous case ids
    for case in ids:
        days = [s.day for s in specs if s.case == case]
        assert days == sorted(set(days)) and max(days) <= 39
    assert any(np.diff([s.day for s in specs if s.case == c]).max(initial=1) > 1 for c in ids)  # gaps
    gains = [s.gain for s in specs]
    assert max(gains) / min(gains) > 10
    # rows are not in lexicographic order, as in the real train.csv
    assert [s.case for s in specs] != sorted(s.case for s in specs)


def test_small_plan_has_every_geometry_and_options():
    specs = plan_dataset(cases=2, days=2, slices=5, scale=0.5, seed=3)
    assert len(specs) == 4 and all(s.depth == 5 for s in specs)
    assert {(s.width, s.height) for s in specs} == {(133, 133), (180, 155), (138, 138), (117, 117)}
    assert {s.spacing for s in specs} == {3.0, 3.26}
    with pytest.raises(ValueError, match="cases"):
        plan_dataset(cases=0)
    with pytest.raises(ValueError, match="slices"):
        plan_dataset(slices=2)


def test_fixture_layout_is_exact(synth_root):
    assert (synth_root / "train.csv").read_text().splitlines()[0] == "id,class,segmentation"
    assert (synth_root / "sample_submission.csv").read_text() == "id,class,predicted\n"
    lines = (synth_root / "train.csv").read_text().splitlines()[1:]
    assert len(lines) == 3 * 6 * 8
    assert [ln.split(",")[1] for ln in lines[:6]] == [*CLASSES, *CLASSES]
    pngs = sorted((synth_root / "train").rglob("*.png"))
    assert len(pngs) == 48
    wide = [p for p in pngs if "_360_310_" in p.name]
    assert wide and np.asarray(Image.open(wide[0])).shape == (310, 360)
    with Image.open(pngs[0]) as img:
        assert img.mode == "I;16"
    KaggleDataset(synth_root)  # passes every cross-check


def test_anatomy_is_plausible():
    """A 144-slice 266x266 scan: contiguous presence, empty ends, ~43 % non-empty, organs where they belong."""
    spec = ScanSpec(case=5, day=0, width=266, height=266, spacing=1.5, depth=144, gain=2000.0, seed=0)
    image, label = generate_scan(spec)
    assert image.dtype == np.uint16 and label.shape == (266, 266, 144, 3)
    present = label.any(axis=(0, 1))  # (D, 3)
    for k in range(3):
        z = np.flatnonzero(present[:, k])
        assert z.size and np.array_equal(z, np.arange(z[0], z[-1] + 1)), CLASSES[k]  # one contiguous range
    assert not present[0].any() and not present[-7:].any()
    assert 0.33 < present.any(axis=1).mean() < 0.53
    assert present[:, 2].sum() < present[:, 0].sum()  # stomach on fewer slices than large bowel
    assert (label.sum(axis=-1) > 1).any()  # some pixels carry two classes
    h, w = 266, 266
    rows, cols = np.nonzero(label[..., 2].any(axis=2))
    assert rows.mean() < h / 2 and cols.mean() > w / 2  # stomach upper image-right
    rows, cols = np.nonzero(label[..., 1].any(axis=2))
    assert abs(rows.mean() - h / 2) < h / 6 and abs(cols.mean() - w / 2) < w / 6  # small bowel in the middle
    lb = label[..., 0].any(axis=2)
    cols = np.flatnonzero(lb.any(axis=0))
    assert cols.min() < w * 0.3 and cols.max() > w * 0.7  # large bowel on both flanks
    body = image[..., 70].astype(float)
    assert np.median(image[:10, :10]) < 0.1 * np.percentile(body, 99)  # background near 0


def test_gain_differs_more_than_tenfold(synth_root):
    maxima = []
    for scan in KaggleDataset(synth_root, labels=False).scans:
        maxima.append(max(int(np.asarray(Image.open(s.path)).max()) for s in scan.slices))
    assert max(maxima) / min(maxima) > 10


def test_deterministic_per_seed_and_workers(tmp_path):
    kw = {"cases": 2, "days": 1, "slices": 4, "scale": 0.2, "progress": False}
    write_synthetic_dataset(tmp_path / "a", seed=7, **kw)
    write_synthetic_dataset(tmp_path / "b", seed=7, workers=2, **kw)
    write_synthetic_dataset(tmp_path / "c", seed=8, **kw)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    with pytest.raises(FileExistsError, match="already holds"):
        write_synthetic_dataset(tmp_path / "a", seed=7, **kw)


def test_cli(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--cases", "1", "--days", "1", "--slices", "3", "--scale", "0.2", "--quiet"]
    assert main(args) == 0
    assert "1 cases, 1 scans, 3 slices" in capsys.readouterr().out
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err
