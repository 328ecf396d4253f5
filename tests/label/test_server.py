"""A real MONAI Label server with the kvmonai app, started by scripts/label_server.sh on loopback.

The server runs in the MONAI Label environment (``.venv-label``, or ``KVMONAI_LABEL_VENV``) that
``scripts/label_env.sh`` creates (``scripts/test.sh`` runs it first); without it these tests are skipped. It serves a
copy of the ``setr_kv`` bundle with random tiny-preset weights and a copy of ``unetr_kv`` without weights, on a
studies folder holding one synthetic volume stored in RAS with a non-square slice (so that the bundles' PLS
reorientation has to be undone). The tests talk HTTP to it and stop it by its process group in the end.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from kvmonai.bundle import bundle_workflow
from kvmonai.data.prepare import prepare_dataset
from kvmonai.data.synth import write_synthetic_dataset
from kvmonai.networks import create

REPO = Path(__file__).resolve().parents[2]
LABEL_VENV = Path(os.environ.get("KVMONAI_LABEL_VENV", REPO / ".venv-label"))
TINY = {"preset": "tiny", "img_size": 64}
LABEL_INFO = [{"name": "large_bowel", "idx": 1}, {"name": "small_bowel", "idx": 2}, {"name": "stomach", "idx": 3}]

pytestmark = pytest.mark.skipif(
    not (LABEL_VENV / "bin" / "python").is_file(),
    reason=f"no MONAI Label environment at {LABEL_VENV}: create it with scripts/label_env.sh (scripts/test.sh does)",
)


def _same_weights(a: Path, b: Path) -> bool:
    """Equal tensors (file bytes differ between saves of the same weights)."""
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundles (setr_kv with random tiny weights, unetr_kv without) and a studies folder with one RAS volume."""
    root = tmp_path_factory.mktemp("monailabel")
    for name in ("setr_kv", "unetr_kv"):
        ignore = shutil.ignore_patterns("runs", "models", "predictions", "eval")
        shutil.copytree(REPO / "bundles" / name, root / "bundles" / name, ignore=ignore)
    torch.manual_seed(0)
    net = create("setr", "kv", in_channels=3, out_channels=3, **TINY)
    (root / "bundles" / "setr_kv" / "models").mkdir()
    torch.save(net.state_dict(), root / "bundles" / "setr_kv" / "models" / "model.pt")

    write_synthetic_dataset(root / "raw", cases=1, seed=0, days=1, slices=10, scale=0.25, progress=False)
    prepare_dataset(root / "raw", root / "prepared", progress=False)
    pls = nib.load(next((root / "prepared" / "imagesTr").glob("*.nii.gz")))
    arr = np.asarray(pls.dataobj)[:, 4:-4, :]  # a non-square slice
    ras = nib.as_closest_canonical(nib.Nifti1Image(arr, pls.affine))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and ras.shape[0] != ras.shape[1]
    (root / "studies").mkdir()
    nib.save(ras, root / "studies" / "study1.nii.gz")
    return root


@pytest.fixture(scope="module")
def server(workspace: Path, start_label_server) -> Iterator[Any]:
    """scripts/label_server.sh on the studies folder, serving setr_kv (weights) and unetr_kv (none)."""
    with start_label_server(workspace / "studies", workspace / "bundles", ["setr_kv", "unetr_kv"], workspace) as srv:
        yield srv


def _bundle_label(bundle: Path, image: Path, out: Path) -> nib.Nifti1Image:
    """The bundle's own inference (3 channels) mapped to the documented label values: c + 1, later organ wins."""
    overrides = {"bundle_root": str(bundle), "input_path": str(image), "output_dir": str(out), **TINY}
    wf = bundle_workflow(bundle, ["inference.json"], "infer", logging=False, **overrides)
    wf.run()
    wf.finalize()
    pred = nib.load(next(out.glob("*.nii.gz")))
    channels = np.asarray(pred.dataobj)
    label = np.max(channels * np.arange(1, channels.shape[-1] + 1, dtype=np.uint8), axis=-1).astype(np.uint8)
    return nib.Nifti1Image(label, pred.affine)


def _infer(srv: Any, model: str, dest: Path, image: str | None = None, upload: Path | None = None):
    """POST /infer/<model> for a study id or an uploaded file; the returned label is written to ``dest``."""
    params = {"output": "image", **({"image": image} if image else {})}
    if upload is None:
        r = requests.post(f"{srv.url}/infer/{model}", params=params, timeout=120)
    else:
        with open(upload, "rb") as f:
            r = requests.post(f"{srv.url}/infer/{model}", params=params, files={"file": (upload.name, f)}, timeout=120)
    if r.status_code == 200:
        dest.write_bytes(r.content)
    return r


@pytest.mark.slow
def test_info_lists_bundles_labels_and_trainers(server: Any):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    labels = {"large_bowel": 1, "small_bowel": 2, "stomach": 3}
    assert info["name"] == "kvmonai" and info["labels"] == list(labels)  # names in value order
    assert list(info["models"]) == ["setr_kv"]  # unetr_kv has no weights yet: training only
    model = info["models"]["setr_kv"]
    assert model["type"] == "segmentation" and model["labels"] == labels and model["dimension"] == 3
    assert sorted(info["trainers"]) == ["setr_kv", "unetr_kv"]
    config = info["trainers"]["setr_kv"]["config"]
    assert {"max_epochs", "learning_rate", "val_split", "pretrained", "mlflow", "device"} <= set(config)
    recipe = json.loads((REPO / "bundles" / "setr_kv" / "configs" / "train.json").read_text())
    assert config["max_epochs"] == recipe["max_epochs"]
    assert config["learning_rate"] == pytest.approx(recipe["learning_rate"] / 10)  # fine-tuning: a tenth
    assert info["datastore"]["total"] == 1


@pytest.mark.slow
def test_infer_returns_the_bundles_label_on_the_input_grid(server: Any, tmp_path: Path):
    study = server.studies / "study1.nii.gz"
    r = _infer(server, "setr_kv", tmp_path / "label.nii.gz", image="study1")
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.log_tail()}"
    image, label = nib.load(study), nib.load(tmp_path / "label.nii.gz")
    values = np.asarray(label.dataobj)
    assert label.shape == image.shape and values.dtype == np.uint8
    assert set(np.unique(values).tolist()) <= {0, 1, 2, 3}
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    # the same as the bundle's own inference.json run on the same weights, after the documented mapping
    expected = _bundle_label(server.bundles / "setr_kv", study, tmp_path / "bundle")
    got = nib.as_closest_canonical(label)
    want = nib.as_closest_canonical(expected)
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)
    mismatch = int((np.asarray(got.dataobj) != np.asarray(want.dataobj)).sum())
    assert mismatch <= values.size // 1000, f"{mismatch} of {values.size} voxels differ from the bundle's inference"

    # the same volume uploaded instead of named
    r = _infer(server, "setr_kv", tmp_path / "upload.nii.gz", upload=study)
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.log_tail()}"
    assert np.array_equal(np.asarray(nib.load(tmp_path / "upload.nii.gz").dataobj), values)


@pytest.mark.slow
def test_infer_errors_name_the_problem(server: Any, tmp_path: Path):
    r = _infer(server, "unetr_kv", tmp_path / "x.nii.gz", image="study1")
    assert r.status_code == 409 and "no trained weights" in r.json()["detail"] and "unetr_kv" in r.json()["detail"]
    r = _infer(server, "nope", tmp_path / "x.nii.gz", image="study1")
    assert r.status_code == 404 and "setr_kv" in r.json()["detail"]


@pytest.mark.slow
def test_training_through_rest_fine_tunes_the_served_weights(server: Any, train_rest, tmp_path: Path):
    """Submit a label as 3D Slicer does, fine-tune one tiny epoch, retrain from scratch, get the new weights served."""
    bundle = server.bundles / "setr_kv"
    weights = bundle / "models" / "model.pt"
    before = tmp_path / "before.pt"
    shutil.copy2(weights, before)
    label = _bundle_label(bundle, server.studies / "study1.nii.gz", tmp_path / "bundle")
    nib.save(label, tmp_path / "corrected.nii.gz")
    form = {"params": json.dumps({"label_info": LABEL_INFO})}  # what 3D Slicer's "Submit Label" sends
    with open(tmp_path / "corrected.nii.gz", "rb") as f:
        files = {"label": ("study1.nii.gz", f)}
        r = requests.put(
            f"{server.url}/datastore/label", params={"image": "study1"}, files=files, data=form, timeout=60
        )
    assert r.status_code == 200, r.text
    assert (server.studies / "labels" / "final" / "study1.nii.gz").is_file()

    # fine-tuning (the default): starts from the served weights, validated first (epoch 0), so they are replaced
    # only when the trained epoch beats them
    stats = train_rest(server, {"max_epochs": 1})  # MLflow on, as train.json has it
    runs = list((bundle / "runs").glob("monailabel_*/model_before.pt"))
    assert len(runs) == 1 and _same_weights(runs[0], before)
    assert (runs[0].parent / "mlruns.db").is_file()
    assert stats["epoch"] == 1 and stats["total_epochs"] == 1 and stats["key_metric_name"] == "val_jaccard"
    assert stats["train_studies"] == 1 and stats["in_sample_validation"] is True
    assert stats["best_metric_epoch"] in (0, 1)
    assert stats["weights_updated"] == (stats["best_metric_epoch"] == 1) == (not _same_weights(weights, before))

    # from scratch: the one epoch is the best, so the weights change; the next inference serves them
    shutil.copy2(weights, before)
    stats = train_rest(server, {"max_epochs": 1, "mlflow": False, "pretrained": False})
    assert stats["weights_updated"] is True and stats["best_metric_epoch"] == 1
    assert not _same_weights(weights, before)
    r = _infer(server, "setr_kv", tmp_path / "after.nii.gz", image="study1")
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.log_tail()}"
    expected = nib.as_closest_canonical(_bundle_label(bundle, server.studies / "study1.nii.gz", tmp_path / "new"))
    got = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "after.nii.gz")).dataobj)
    assert (got != np.asarray(expected.dataobj)).sum() <= got.size // 1000
