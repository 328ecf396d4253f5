"""A kvmonai error inside ``python -m monai.bundle run`` ends the output with its one-line message, no traceback.

Inference (a missing input), evaluation (missing weights, a missing datalist) and training (a bad setting) of a
kvmonai bundle, run as a user would; the exported bundle's inference is tested in ``test_export.py``.
``KVMONAI_TRACEBACK=1`` brings the traceback back, with the message still last.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from kvmonai.bundle.settings import SettingsError
from kvmonai.networks import CheckpointError, create
from kvmonai.portable.errors import InputNotFoundError, kvmonai_error
from kvmonai.utils import KVMonaiError

NAME = "setr_kv"
HINT = " (KVMONAI_TRACEBACK=1 shows the traceback)"


def _run(root: Path, configs: list[str], overrides: dict, traceback: bool = False) -> subprocess.CompletedProcess:
    files = [f"configs/{c}" for c in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {k: v for k, v in os.environ.items() if k not in ("KVMONAI_TRACEBACK", "MLFLOW_TRACKING_URI")}
    if traceback:
        env["KVMONAI_TRACEBACK"] = "1"
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line(done: subprocess.CompletedProcess, message: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == f"error: {message}{HINT}", done.stderr[-2000:]
    assert "Traceback" not in output and "Failed to evaluate" not in output, output[-3000:]
    assert len(output.splitlines()) < 25, output


def test_inference_on_a_missing_input(copy_bundle, tmp_path):
    root = copy_bundle(NAME, tmp_path)
    (root / "models").mkdir()
    torch.save(create("setr", "kv", "tiny", img_size=64).state_dict(), root / "models" / "model.pt")
    missing = tmp_path / "nonexistent.nii.gz"
    overrides = {"preset": "tiny", "img_size": 64, "input_path": missing, "output_dir": tmp_path / "out"}

    _assert_one_line(_run(root, ["inference.json"], overrides), f"{missing}: no such file or folder.")
    assert not (tmp_path / "out").exists()

    done = _run(root, ["inference.json"], overrides, traceback=True)
    assert done.returncode != 0 and "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1] == f"error: {missing}: no such file or folder."


def test_evaluation_without_weights_or_datalist(prepared, copy_bundle, tmp_path):
    root = copy_bundle(NAME, tmp_path)
    overrides = {"preset": "tiny", "img_size": 64, "datalist": prepared, "num_workers": 0, "mlflow": False}
    done = _run(root, ["train.json", "evaluate.json"], overrides)
    _assert_one_line(done, "checkpoint models/model.pt does not exist: train the bundle first or pass the right path.")

    missing = tmp_path / "none.json"
    done = _run(root, ["train.json", "evaluate.json"], {**overrides, "datalist": missing})
    _assert_one_line(done, f"datalist {missing}: no such file; write it with kvmonai prepare, or pass --datalist.")


def test_training_with_a_bad_setting(prepared, copy_bundle, tmp_path):
    root = copy_bundle(NAME, tmp_path)
    overrides = {"preset": "tiny", "img_size": 60, "datalist": prepared}
    done = _run(root, ["train.json"], overrides)
    _assert_one_line(done, "img_size: must be a multiple of 16, got 60 (e.g. --img_size 64).")
    assert not (root / "runs").exists()


def test_errors_share_one_base_class_found_behind_wrappers():
    for error in (SettingsError, CheckpointError, InputNotFoundError):
        assert issubclass(error, KVMonaiError)
    assert issubclass(InputNotFoundError, FileNotFoundError) and issubclass(SettingsError, ValueError)
    inner = InputNotFoundError("x: no such file or folder.")
    try:
        try:
            raise inner
        except InputNotFoundError as e:
            raise RuntimeError("applying transform") from e
    except RuntimeError as e:
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression")  # implicit __context__, as MONAI's parser
        except RuntimeError as outer:
            assert kvmonai_error(outer) is inner
        assert e.__cause__ is inner
    assert kvmonai_error(ValueError("not kvmonai's")) is None and kvmonai_error(None) is None
