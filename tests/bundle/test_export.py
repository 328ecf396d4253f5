"""``kvmonai export``: the exported bundle runs with MONAI alone and gives the kvmonai bundle's masks, plus a SEG.

A tiny SETR-KV and a tiny SwinUNETR-KV bundle are fitted to a prepared volume, which is also written as a DICOM MR
series (axial for SETR, oblique for SwinUNETR). The exported bundle is run with ``python -m monai.bundle run`` in a
process that sees only the distributions of the exported ``requirements.txt`` (linked into a folder, ``python -S``),
so neither kvmonai nor any package it brings along is importable, from a folder outside the repository.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kvmonai import portable
from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.cli import main
from kvmonai.data.dicom_series import rotation, write_dicom_series
from kvmonai.export import ExportError, export_bundle
from kvmonai.metrics import pooled_dice

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")  # ITK's SWIG bindings
hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

REPO = Path(__file__).resolve().parents[2]
SCHEMA = Path(os.environ.get("KVMONAI_BUNDLE_SCHEMA", REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"))
SIZE = 64
#: what the exported bundle's code may import (its required packages) besides the standard library
ALLOWED = {"torch", "numpy", "monai", "nibabel", "pydicom", "highdicom"}


def _volume(prepared: Path) -> tuple[Path, Path]:
    volume = next(v for v in json.loads(Path(prepared).read_text())["training"] if v["fold"] == 0)
    return Path(prepared).parent / volume["image"], Path(prepared).parent / volume["label"]


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions that ``requirements`` pull in, transitively (extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = [Requirement(r).name for r in requirements], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _minimal_site(requirements: Path, dest: Path) -> Path:
    """A folder that holds only the distributions of ``requirements`` (and theirs), linked from this environment.

    With ``python -S`` and ``PYTHONPATH`` set to it, a process sees what a fresh ``pip install -r
    requirements.txt`` would give, and nothing else: no kvmonai, no mlflow, no packages MONAI merely tolerates.
    """
    from importlib import metadata

    pins = [line for line in requirements.read_text().splitlines() if line and not line.startswith("#")]
    dest.mkdir()
    for name in sorted(_closure(pins)):
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return dest


def _run_without_kvmonai(bundle: Path, input_path: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` seeing only the exported bundle's requirements.txt, from a folder outside."""
    site = _minimal_site(bundle / "requirements.txt", cwd / "site-packages")
    assert not (site / "kvmonai").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    cmd = [
        sys.executable, "-S", "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
        "--input_path", str(input_path), "--output_dir", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _nifti_on_source_pixels(nifti: Path, datasets: list) -> np.ndarray:
    """The NIfTI mask at every source pixel, by world coordinates: ``(frames, rows, cols, channels)``.

    Written independently of ``kvmonai.portable.dicom_seg``: nibabel's affine and the DICOM plane equations.
    """
    img = nib.load(nifti)
    data, to_voxel = np.asarray(img.dataobj), np.linalg.inv(img.affine)
    frames = []
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[: ds.Rows, : ds.Columns]
        lps = np.array(ds.ImagePositionPatient, dtype=float)[:, None, None] + (
            iop[:3, None, None] * c * dc + iop[3:, None, None] * r * dr
        )
        ras = lps * np.array([-1.0, -1.0, 1.0])[:, None, None]
        ijk = np.einsum("ab,bxy->axy", to_voxel[:3, :3], ras) + to_voxel[:3, 3, None, None]
        near = np.rint(ijk).astype(int)
        assert np.abs(ijk - near).max() < 1e-3, "the NIfTI mask must lie on the source grid"
        frames.append(data[near[0], near[1], near[2]])
    return np.stack(frames).astype(bool)


@pytest.mark.parametrize(("arch", "oblique"), [("setr", False), ("swin_unetr", True)])
def test_exported_bundle_runs_without_kvmonai(arch, oblique, prepared, copy_bundle, fit_bundle, tmp_path):
    root = copy_bundle(f"{arch}_kv", tmp_path)
    image, label = _volume(prepared)
    fit_bundle(root, arch, image, label, SIZE)
    nii = nib.load(image)
    tilt = rotation(15, (1, 1, 0)) if oblique else None
    series = write_dicom_series(np.asarray(nii.dataobj), nii.affine, tmp_path / "dicom" / "case1", tilt=tilt)

    # the kvmonai bundle, in fp32
    wf = bundle_workflow(
        root, ["inference.json"], "infer", logging=False, bundle_root=str(root), preset="tiny", img_size=SIZE,
        precision="fp32", input_path=str(series.folder), output_dir=str(tmp_path / "kv"), **{"inferer#progress": False},
    )  # fmt: skip
    wf.run()
    wf.finalize()
    kv_mask = np.asarray(nib.load(tmp_path / "kv" / "case1_seg.nii.gz").dataobj)
    assert (tmp_path / "kv" / "case1_seg.dcm").is_file()  # every bundle writes a SEG for a DICOM input
    dice = pooled_dice(kv_mask, np.asarray(nib.load(label).dataobj))
    assert dice > 0.25, f"the fitted network should segment much of its volume: {dice}"

    exported = tmp_path / "exported"
    argv = ["export", str(root), "--weights", str(root / "models" / "model.pt"), "--out", str(exported)]
    assert main([*argv, "--set", "preset=tiny", "--set", f"img_size={SIZE}", "--quiet"]) == 0

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = _run_without_kvmonai(exported, series.folder, tmp_path / "exp", outside)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    nifti = tmp_path / "exp" / "case1_seg.nii.gz"
    exp_img = nib.load(nifti)
    np.testing.assert_array_equal(np.asarray(exp_img.dataobj), kv_mask)  # identical in fp32
    np.testing.assert_allclose(exp_img.affine, nib.load(tmp_path / "kv" / "case1_seg.nii.gz").affine)

    # the SEG, read back with highdicom, mapped onto the source series, voxel for voxel against the NIfTI mask
    seg = hd.seg.segread(tmp_path / "exp" / "case1_seg.dcm")
    sources = [pydicom.dcmread(f) for f in series.files]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], segment_numbers=[1, 2, 3], combine_segments=False
    )
    np.testing.assert_array_equal(frames.astype(bool), _nifti_on_source_pixels(nifti, sources))
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Large bowel", "Small bowel", "Stomach"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == f"{arch}_kv_exported" and algorithm.AlgorithmVersion == "0.1.0"

    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    assert "kvmonai" not in meta["required_packages_version"] and "highdicom" in meta["required_packages_version"]
    assert meta["exported_from"]["bundle"] == f"{arch}_kv"
    assert "kvmonai" not in (exported / "configs" / "inference.json").read_text()
    if SCHEMA.is_file():
        from monai.bundle import verify_metadata

        verify_metadata(meta_file=str(exported / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_portable_modules_import_only_the_exported_requirements():
    src = Path(portable.__file__).parent
    for name in ("__init__", *portable.MODULES):
        tree = ast.parse((src / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: a sibling module
                    assert node.module in portable.MODULES, (name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            bad = {r for r in roots if r not in ALLOWED and r not in sys.stdlib_module_names}
            assert not bad, f"kvmonai/portable/{name}.py imports {bad}; exported bundles carry only {sorted(ALLOWED)}"
    assert sorted(p.stem for p in src.glob("*.py")) == sorted(("__init__", *portable.MODULES))


def test_export_refuses_and_writes_nothing(tmp_path, copy_bundle, capsys):
    import torch

    from kvmonai.networks import create

    root = copy_bundle("setr_kv", tmp_path)
    (root / "models").mkdir()
    torch.save(create("unetr", "kv", "tiny", img_size=SIZE).state_dict(), root / "models" / "unetr.pt")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"--weights .*unetr.pt"):
        export_bundle(root, root / "models" / "unetr.pt", out, {"preset": "tiny", "img_size": SIZE})
    assert not out.exists() and not list(tmp_path.glob(".out.*"))

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", str(root), "--weights", str(root / "models" / "unetr.pt"), "--out", str(out)]
    assert main(argv) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(root), "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o2")]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--weights", str(root / "models" / "unetr.pt"), "--out", str(out)]) == 2
    assert "not a kvmonai bundle" in capsys.readouterr().err


def test_export_scripts_are_the_package_code_and_large_files(tmp_path, copy_bundle):
    import torch

    from kvmonai.networks import create

    root = copy_bundle("setr_kv", tmp_path)
    (root / "models").mkdir()
    torch.save(create("setr", "kv", "tiny", img_size=SIZE).state_dict(), root / "models" / "model.pt")
    summary = export_bundle(
        root, root / "models" / "model.pt", tmp_path / "exp", {"preset": "tiny", "img_size": SIZE},
        weights_url="https://example.org/setr_kv/model.pt2",
    )  # fmt: skip
    src = Path(portable.__file__).parent
    for name in ("__init__", *portable.MODULES):
        text = (tmp_path / "exp" / "scripts" / f"{name}.py").read_text()
        header, _, body = text.partition("# change the kvmonai source and export again.\n")
        assert "Generated by `kvmonai export`" in header and body == (src / f"{name}.py").read_text()
    large = (tmp_path / "exp" / "large_files.yml").read_text()
    assert 'path: "models/model.pt2"' in large and summary.program_sha256 in large and "sha256" in large
    cfg = json.loads((tmp_path / "exp" / "configs" / "inference.json").read_text())
    assert cfg["img_size"] == SIZE and "preset" not in cfg and cfg["network_def"]["_target_"].startswith("scripts.")


def test_exported_bundle_reports_a_missing_input_in_one_line(tmp_path, copy_bundle):
    """A kvmonai error inside the exported bundle (here: its input) ends the output, without kvmonai installed."""
    import torch

    from kvmonai.networks import create

    root = copy_bundle("setr_kv", tmp_path)
    (root / "models").mkdir()
    torch.save(create("setr", "kv", "tiny", img_size=SIZE).state_dict(), root / "models" / "model.pt")
    exported = tmp_path / "exp"
    export_bundle(root, root / "models" / "model.pt", exported, {"preset": "tiny", "img_size": SIZE})
    config = json.loads((exported / "configs" / "inference.json").read_text())
    assert config["run"][0]["_target_"] == "scripts.errors.report_errors"  # initialize cannot import scripts/

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    missing = tmp_path / "nonexistent.nii.gz"
    done = _run_without_kvmonai(exported, missing, tmp_path / "out", outside)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    last = done.stderr.splitlines()[-1]
    assert last == f"error: {missing}: no such file or folder. (KVMONAI_TRACEBACK=1 shows the traceback)", output
    assert "Traceback" not in output and len(output.splitlines()) < 25, output
