"""Preparation: NIfTI volumes, datalist and folds; idempotence, resumption, atomic writes, untouched source."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kvmonai.cli import main
from kvmonai.data.datalist import assign_folds, load_datalist
from kvmonai.data.kaggle import KaggleDataset, KaggleFormatError
from kvmonai.data.prepare import kaggle_affine, prepare_dataset, read_fingerprint, write_nifti


def _tree_state(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _volumes(out: Path) -> list[Path]:
    return sorted(out.rglob("*.nii.gz"))


def test_synth_then_prepare_cli(tmp_path, capsys):
    """The issue's acceptance path: 3 synthetic cases through both commands."""
    src, out = tmp_path / "kaggle", tmp_path / "prepared"
    assert main(["synth", "--out", str(src), "--cases", "3", "--slices", "6", "--scale", "0.3", "--quiet"]) == 0
    before = _tree_state(src)
    assert main(["prepare", "--src", str(src), "--out", str(out), "--quiet"]) == 0
    assert "written" in capsys.readouterr().out
    assert _tree_state(src) == before  # the source is never modified
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "large_bowel", "1": "small_bowel", "2": "stomach"}
    folds_of_case = defaultdict(set)
    for e in datalist["training"]:
        folds_of_case[e["case"]].add(e["fold"])
        assert (out / e["image"]).is_file() and (out / e["label"]).is_file()
    assert len(folds_of_case) == 3 and all(len(f) == 1 for f in folds_of_case.values())  # never split a case
    assert datalist["numTraining"] == len(datalist["training"]) == len(KaggleDataset(src).scans)


def test_volumes_match_the_source(synth_root, prepared_root):
    ds = KaggleDataset(synth_root)
    items = {e["id"]: e for e in load_datalist(prepared_root / "datalist.json")}
    for scan in ds.scans:
        item = items[scan.id]
        img = nib.load(item["image"])
        lab = nib.load(item["label"])
        assert img.get_data_dtype() == np.uint16 and lab.get_data_dtype() == np.uint8
        assert img.shape == scan.shape and lab.shape == (*scan.shape, 3)
        np.testing.assert_array_equal(np.asarray(img.dataobj), ds.load_image(scan))
        np.testing.assert_array_equal(np.asarray(lab.dataobj), ds.load_label(scan))
        assert nib.aff2axcodes(img.affine) == ("P", "L", "S")
        np.testing.assert_allclose(img.header.get_zooms(), scan.spacing)
        np.testing.assert_allclose(img.affine, kaggle_affine(scan.spacing))
        presence = ds.slice_presence(scan)
        assert item["nonempty_slices"] == np.flatnonzero(presence.any(1)).tolist()
        assert item["class_slices"] == presence.sum(0).tolist()
        assert item["num_slices"] == scan.depth and item["shape"] == list(scan.shape)
    wide = next(e for e in items.values() if e["shape"][:2] == [310, 360])
    assert nib.load(wide["label"]).shape[:2] == (310, 360)
    np.testing.assert_allclose(next(e for e in items.values() if e["shape"][0] == 276)["spacing"], [1.63, 1.63, 3.0])


def test_monai_loads_the_datalist(prepared_root):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    items = load_decathlon_datalist(str(prepared_root / "datalist.json"), True, "training")
    sample = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])(items[0])
    h, w, d = items[0]["shape"]
    assert tuple(sample["image"].shape) == (1, h, w, d)
    assert tuple(sample["label"].shape) == (3, h, w, d)


def test_rerun_skips_finished_volumes(synth_copy, tmp_path):
    out = tmp_path / "out"
    first = prepare_dataset(synth_copy, out, progress=False)
    assert first.written == 2 * first.scans and first.skipped == 0
    state = _tree_state(out / "imagesTr") | _tree_state(out / "labelsTr")
    again = prepare_dataset(synth_copy, out, progress=False)
    assert again.written == 0 and again.skipped == 2 * first.scans
    assert (_tree_state(out / "imagesTr") | _tree_state(out / "labelsTr")) == state  # not rewritten
    victim = _volumes(out / "labelsTr")[0]
    victim.unlink()
    (out / "imagesTr" / ".case1_day1.nii.gz.part").write_bytes(b"junk of a killed run")
    third = prepare_dataset(synth_copy, out, progress=False)
    assert third.written == 1 and victim.is_file()
    assert not list(out.rglob("*.part"))
    # a changed source is detected by the fingerprint and rewritten
    csv = synth_copy / "train.csv"
    lines = csv.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.endswith(","))
    lines[i] += "1 3"
    csv.write_text("\n".join(lines) + "\n")
    fourth = prepare_dataset(synth_copy, out, progress=False)
    assert fourth.written == 1


def test_interrupted_run_leaves_no_partial_volume(synth_copy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = KaggleDataset.load_label

    def flaky(self, scan):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, scan)

    monkeypatch.setattr(KaggleDataset, "load_label", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(synth_copy, out, progress=False)
    assert len(_volumes(out / "labelsTr")) == 2 and not list(out.rglob("*.part"))
    assert not (out / "datalist.json").exists()
    for p in _volumes(out):
        assert read_fingerprint(p)  # every volume present is complete
    monkeypatch.setattr(KaggleDataset, "load_label", real)
    resumed = prepare_dataset(synth_copy, out, progress=False)
    assert resumed.skipped == 3 + 2  # 3 images and 2 labels were finished before the interruption
    assert resumed.written == 2 * resumed.scans - 5


def test_write_nifti_removes_its_partial_file(tmp_path, monkeypatch):
    def boom(self, file_map):
        file_map["image"].fileobj.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", boom)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(tmp_path / "v.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_write_nifti_is_reproducible(tmp_path):
    data = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    write_nifti(tmp_path / "a.nii.gz", data, kaggle_affine((1.5, 1.5, 3.0)), "d", "fp123")
    write_nifti(tmp_path / "b.nii.gz", data, kaggle_affine((1.5, 1.5, 3.0)), "d", "fp123")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert read_fingerprint(tmp_path / "a.nii.gz") == "fp123"
    assert read_fingerprint(tmp_path / "missing.nii.gz") is None
    with pytest.raises(ValueError, match=".nii.gz"):
        write_nifti(tmp_path / "a.nii", data, np.eye(4))


def test_bad_png_stops_prepare_without_half_written_volume(synth_copy, tmp_path):
    from PIL import Image

    scan = KaggleDataset(synth_copy).scans[2]
    bad = scan.slices[3].path
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(bad)
    out = tmp_path / "out"
    with pytest.raises(KaggleFormatError, match=f"{bad.name}: image is 5x5"):
        prepare_dataset(synth_copy, out, progress=False)
    assert not (out / "imagesTr" / f"{scan.id}.nii.gz").exists()
    assert not list(out.rglob("*.part"))
    assert len(_volumes(out / "imagesTr")) == 2  # the two scans before it are complete


def test_bad_source_writes_nothing(synth_copy, tmp_path, capsys):
    lines = (synth_copy / "train.csv").read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",liver,"
    (synth_copy / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", "--src", str(synth_copy), "--out", str(out), "--quiet"]) == 2
    assert "line 6: unknown class 'liver'" in capsys.readouterr().err
    assert not out.exists()


def test_out_inside_src_is_refused(synth_copy):
    with pytest.raises(ValueError, match="inside --src"):
        prepare_dataset(synth_copy, synth_copy / "prepared", progress=False)
    with pytest.raises(ValueError, match="inside --src"):
        prepare_dataset(synth_copy, synth_copy, progress=False)


def test_assign_folds_groups_and_stratifies():
    rng = np.random.default_rng(0)
    cases = rng.choice(200, 85, replace=False)
    groups = {int(c): (int(rng.integers(40, 400)), int(rng.integers(30, 300))) for c in cases}
    folds = assign_folds(groups, num_folds=5, seed=0)
    assert set(folds) == set(groups) and set(folds.values()) == set(range(5))
    assert folds == assign_folds(groups, num_folds=5, seed=0)
    empty = np.zeros(5)
    full = np.zeros(5)
    for case, f in folds.items():
        empty[f] += groups[case][0]
        full[f] += groups[case][1]
    frac = full / (full + empty)
    overall = full.sum() / (full.sum() + empty.sum())
    assert np.abs(frac - overall).max() < 0.02
    sizes = full + empty
    assert sizes.max() / sizes.min() < 1.1
    assert len(set(assign_folds({1: (3, 1), 2: (2, 2)}, num_folds=5).values())) == 2  # fewer cases than folds
    with pytest.raises(ValueError, match="num_folds"):
        assign_folds(groups, num_folds=1)


def test_content_changes_and_damaged_outputs_are_not_up_to_date(synth_copy, tmp_path):
    """A PNG edited in place at the same size, and a truncated volume, are rewritten (reliability finding 6)."""
    from PIL import Image

    out = tmp_path / "out"
    first = prepare_dataset(synth_copy, out, progress=False)
    png = sorted(synth_copy.rglob("*.png"))[0]
    pixels = np.asarray(Image.open(png)).copy()
    pixels[0, 0] = pixels[0, 0] + 1 if pixels[0, 0] < 60000 else 0
    size, mtime = png.stat().st_size, png.stat().st_mtime_ns
    Image.fromarray(pixels).save(png, compress_level=9)
    data = png.read_bytes()
    assert len(data) <= size
    png.write_bytes(data + b"\0" * (size - len(data)))  # bytes after IEND are ignored: same size, new content
    os.utime(png, ns=(mtime + 10**9, mtime + 10**9))
    assert png.stat().st_size == size  # a name + size fingerprint would miss the edit
    before = (out / "imagesTr" / f"{png.parent.parent.name}.nii.gz").stat().st_mtime_ns
    again = prepare_dataset(synth_copy, out, progress=False)
    assert again.written == 1 and again.skipped == 2 * first.scans - 1
    assert (out / "imagesTr" / f"{png.parent.parent.name}.nii.gz").stat().st_mtime_ns != before  # that scan's

    victim = _volumes(out / "labelsTr")[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # header intact, stream truncated
    assert read_fingerprint(victim) is not None
    third = prepare_dataset(synth_copy, out, progress=False)
    assert third.written == 1
    nib.load(victim).get_fdata()  # readable again
