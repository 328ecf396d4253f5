"""Fixtures for the MONAI Label tests: starting a real server (scripts/label_server.sh) and a real Orthanc PACS.

Whatever a fixture starts runs on 127.0.0.1 and is stopped by its process group in a ``finally``. Without the MONAI
Label environment, Orthanc or Chromium the tests that need them are skipped with the reason; CI sets
``KVMONAI_REQUIRE_PACS=1``, which turns those skips into failures so that they cannot pass unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LABEL_VENV = Path(os.environ.get("KVMONAI_LABEL_VENV", REPO / ".venv-label"))
#: the app's --conf overrides for the tiny preset, and training shrunk to seconds
TINY_OVERRIDES = "preset=tiny,img_size=64,num_workers=0,slices_per_volume=4,volumes_per_batch=2"


def require(condition: bool, reason: str) -> None:
    """Skip (or, with ``KVMONAI_REQUIRE_PACS=1``, fail) when ``condition`` is false."""
    if condition:
        return
    if os.environ.get("KVMONAI_REQUIRE_PACS") == "1":
        pytest.fail(f"KVMONAI_REQUIRE_PACS=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running MONAI Label server."""

    url: str
    bundles: Path
    studies: Path | str  # a folder, or a DICOMweb URL
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def label_server(
    studies: str | Path, bundles: Path, models: Sequence[str], workdir: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``scripts/label_server.sh STUDIES`` on a free loopback port; its whole process group is killed afterwards."""
    venv_ok = (LABEL_VENV / "bin" / "python").is_file()
    require(venv_ok, f"no MONAI Label environment at {LABEL_VENV} (scripts/label_env.sh creates it)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "KVMONAI_LABEL_PORT": str(port), "MONAI_LABEL_SESSION_PATH": str(workdir / "sessions")}
    full_env["KVMONAI_LABEL_VENV"] = str(LABEL_VENV)
    full_env.update(env or {})
    cmd = [str(REPO / "scripts" / "label_server.sh"), str(studies)]
    cmd += ["--conf", "bundles", str(bundles), "--conf", "models", ",".join(models)]
    cmd += ["--conf", "overrides", full_env.pop("KVMONAI_TEST_OVERRIDES", TINY_OVERRIDES)]
    where = studies if str(studies).startswith(("http://", "https://")) else Path(studies)
    srv = Server(f"http://127.0.0.1:{port}", bundles, where, workdir / f"server-{port}.log")
    with open(srv.log, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with status {proc.returncode}:\n{srv.log_tail()}")
            try:
                if requests.get(f"{srv.url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /info/ within 120 s:\n{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def start_label_server() -> Callable[..., object]:
    """:func:`label_server`, for tests and fixtures that start their own server."""
    return label_server


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or ``None``."""
    from kvmonai.label.pacs import DICOMWEB_PLUGIN

    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").is_file()):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
    return None


@dataclass
class Study:
    """One synthetic study in the PACS."""

    case: str
    image: Path  # the NIfTI it was written from
    label: Path  # its ground truth (prepared, 3 channels)
    series_uid: str
    study_uid: str
    tilt: float


@dataclass
class PacsLoop:
    """Orthanc with two MR studies, and a MONAI Label server serving ``setr_kv`` over its DICOMweb."""

    orthanc: object
    server: Server
    studies: list[Study]
    root: Path


@pytest.fixture(scope="session")
def pacs_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsLoop]:
    """Two synthetic MR studies (one tilted by 10 degrees) in a fresh Orthanc, served by the kvmonai app.

    ``setr_kv`` gets random tiny-preset weights, or, for documentation screenshots, the weights in
    ``KVMONAI_OHIF_WEIGHTS`` with the overrides in ``KVMONAI_OHIF_OVERRIDES``.
    """
    import torch

    from kvmonai.data.prepare import prepare_dataset
    from kvmonai.data.synth import write_synthetic_dataset
    from kvmonai.label.pacs import OrthancServer, load_studies
    from kvmonai.networks import create

    missing = orthanc_missing()
    require(missing is None, str(missing))
    require((LABEL_VENV / "bin" / "python").is_file(), f"no MONAI Label environment at {LABEL_VENV}")
    root = tmp_path_factory.mktemp("pacs")
    bundle = root / "bundles" / "setr_kv"
    shutil.copytree(REPO / "bundles" / "setr_kv", bundle, ignore=shutil.ignore_patterns("runs", "models", "eval"))
    (bundle / "models").mkdir()
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache")}
    if os.environ.get("KVMONAI_OHIF_WEIGHTS"):
        shutil.copy2(os.environ["KVMONAI_OHIF_WEIGHTS"], bundle / "models" / "model.pt")
        env["KVMONAI_TEST_OVERRIDES"] = os.environ.get("KVMONAI_OHIF_OVERRIDES", TINY_OVERRIDES)
    else:
        torch.manual_seed(0)
        torch.save(create("setr", "kv", preset="tiny", img_size=64).state_dict(), bundle / "models" / "model.pt")

    write_synthetic_dataset(root / "raw", cases=2, seed=3, days=1, slices=24, scale=0.5, progress=False)
    prepare_dataset(root / "raw", root / "prepared", progress=False)
    images = sorted((root / "prepared" / "imagesTr").glob("*.nii.gz"))
    assert len(images) == 2
    with OrthancServer(root / "orthanc", port=free_port()) as orthanc:
        studies = []
        for image, tilt in zip(images, (10.0, 0.0), strict=True):
            (loaded,) = load_studies(orthanc.dicomweb_url, [image], tilt=tilt, progress=False)
            label = root / "prepared" / "labelsTr" / image.name
            studies.append(Study(loaded.patient_id, image, label, loaded.series_uid, loaded.study_uid, tilt))
        with label_server(orthanc.dicomweb_url, root / "bundles", ["setr_kv"], root / "label", env) as server:
            yield PacsLoop(orthanc, server, studies, root)


#: what 3D Slicer and OHIF send with a label: every organ of the app, whatever the label holds
CLIENT_LABEL_INFO = [
    {"name": "large_bowel", "idx": 1},
    {"name": "small_bowel", "idx": 2},
    {"name": "stomach", "idx": 3},
]


def _infer_series(loop: PacsLoop, series_uid: str, params: dict) -> requests.Response:
    """POST /infer/setr_kv for a PACS series by its UID."""
    r = requests.post(
        f"{loop.server.url}/infer/setr_kv",
        params={"image": series_uid, "output": "image"},
        files={"params": (None, json.dumps(params))},
        timeout=180,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n{loop.server.log_tail()}"
    return r


@pytest.fixture(scope="session")
def infer_series() -> Callable[..., requests.Response]:
    """``infer_series(loop, series_uid, params)``: MONAI Label's inference of a PACS series."""
    return _infer_series


def _truth_on(grid: Any, study: Study, organs: tuple[int, ...]) -> np.ndarray:
    """The study's ground truth (values 1..3, later organ wins) resampled onto ``grid``, keeping only ``organs``.

    The series was written from the prepared volume with its geometry rotated by ``study.tilt`` about the origin, so a
    grid voxel maps to the prepared voxel ``inv(A_truth) @ inv(R) @ A_grid``: a permutation for these grids.
    """
    import nibabel as nib
    from scipy import ndimage

    from kvmonai.data.dicom_series import rotation

    truth = nib.load(study.label)
    channels = np.asarray(truth.dataobj)
    values = np.zeros(channels.shape[:3], np.uint8)
    for c in range(3):
        if c + 1 in organs:
            values[channels[..., c] > 0] = c + 1
    r4 = np.eye(4)
    r4[:3, :3] = rotation(study.tilt, (1.0, 1.0, 0.0)) if study.tilt else np.eye(3)
    m = np.linalg.inv(truth.affine) @ np.linalg.inv(r4) @ grid.affine
    assert np.allclose(np.abs(m[:3, :3]).sum(0), 1.0, atol=1e-3), "the grids are not voxel permutations"
    return ndimage.affine_transform(values, m[:3, :3], m[:3, 3], output_shape=grid.shape, order=0)


@pytest.fixture(scope="session")
def submit_truth(pacs_loop: PacsLoop, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., np.ndarray]:
    """``submit_truth(study, organs)``: save the study's ground truth (only ``organs``) as its final label, as a
    client does (with every organ in ``label_info``); returns the label array on the study's grid."""
    import nibabel as nib

    def submit(study: Study, organs: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
        tmp = tmp_path_factory.mktemp("label")
        (tmp / "grid.nii.gz").write_bytes(_infer_series(pacs_loop, study.series_uid, {}).content)
        grid = nib.load(tmp / "grid.nii.gz")
        label = _truth_on(grid, study, organs)
        nib.save(nib.Nifti1Image(label, grid.affine), tmp / "final.nii.gz")
        with open(tmp / "final.nii.gz", "rb") as f:
            r = requests.put(
                f"{pacs_loop.server.url}/datastore/label",
                params={"image": study.series_uid, "tag": "final"},
                files={"label": ("final.nii.gz", f)},
                data={"params": json.dumps({"label_info": CLIENT_LABEL_INFO})},
                timeout=120,
            )
        assert r.status_code == 200, f"{r.text[:300]}\n{pacs_loop.server.log_tail()}"
        return label

    return submit


@pytest.fixture(scope="session")
def require_or_skip() -> Callable[[bool, str], None]:
    """:func:`require` (skip, or fail under ``KVMONAI_REQUIRE_PACS=1``), for test modules."""
    return require


def _train_rest(srv: Server, params: dict, timeout: float = 240.0) -> dict:
    """POST /train/setr_kv, wait until it ends (DONE), and return the model's train_stats from /info/."""
    r = requests.post(f"{srv.url}/train/setr_kv", json=params, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + timeout
    while True:
        status = requests.get(f"{srv.url}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still running after {timeout:.0f} s:\n{srv.log_tail()}"
        time.sleep(1)
    details = "\n".join(status.get("details", []))
    assert status["status"] == "DONE", f"{status['status']}:\n{details}\n{srv.log_tail()}"
    return requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"]["setr_kv"]


@pytest.fixture(scope="session")
def train_rest() -> Callable[..., dict]:
    """``train_rest(server, params)``: a MONAI Label training over REST, waited for; its train_stats."""
    return _train_rest
