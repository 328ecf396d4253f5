"""State kept between runs: locks, moved-aside outputs, MLflow run states, resume with more epochs, last-epoch
validation, study fingerprints and argument checks (issue: reliability, findings 1-8)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kvmonai.bundle import RunGuard, RunInUseError
from kvmonai.bundle.workflow import bundle_workflow


class _Engine:
    class state:  # noqa: N801 - a stand-in for ignite's engine.state
        epoch = 0
        max_epochs = 1


def _train(root: Path, overrides: dict) -> None:
    wf = bundle_workflow(root, ["train.json"], "train", logging=False, bundle_root=str(root), **overrides)
    wf.run()
    wf.finalize()


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_second_writer_is_refused_at_once_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    first = RunGuard(str(run))
    first.started(_Engine())
    (run / "metrics.csv").write_text("epoch\n1\n")
    second = RunGuard(str(run))
    with pytest.raises(RunInUseError, match=rf"{run} is being written by another training \(pid {os.getpid()}"):
        second.started(_Engine())
    assert (run / "metrics.csv").read_text() == "epoch\n1\n" and not (run / "previous").exists()
    first.release()
    RunGuard(str(run), resume=True).started(_Engine())  # free again once the first one ended


def test_the_configs_run_lock_is_the_one_the_guard_holds(tmp_path):
    from kvmonai.bundle import RunLock

    run = tmp_path / "run"
    lock = RunLock(str(run)).acquire()  # train.json's run_lock, taken in initialize
    guard = RunGuard(str(run), lock=lock)
    guard.started(_Engine())  # adopts it: no second flock of its own, which would refuse this very run
    assert guard.lock is lock and lock.held
    with pytest.raises(RunInUseError, match="is being written by another training"):
        RunLock(str(run)).acquire()
    guard.release()
    assert not lock.held
    lock.release()  # finalize releases again: nothing happens
    with RunLock(str(run)) as again:
        assert again.held
    with pytest.raises(ValueError, match="the lock guards .*run, not output_dir"):
        RunGuard(str(tmp_path / "other"), lock=RunLock(str(run)))
    off = RunLock(str(tmp_path / "rank1"), enabled=False).acquire()  # other ranks of a distributed run
    assert not off.held and not (tmp_path / "rank1").exists()


def test_fresh_run_moves_earlier_outputs_aside_and_closes_killed_mlflow_run(tmp_path):
    run, model = tmp_path / "run", tmp_path / "models" / "model.pt"
    run.mkdir()
    model.parent.mkdir()
    for name in ("metrics.csv", "checkpoint_last.pt", "run_settings.json"):
        (run / name).write_text(name)
    model.write_text("weights")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("kvmonai")
    killed = client.create_run(experiment, run_name="run").info.run_id  # left RUNNING by a SIGKILL

    guard = RunGuard(str(run), resume=False, model_path=str(model), tracking_uri=uri, run_name="run")
    guard.started(_Engine())
    (previous,) = (run / "previous").iterdir()
    assert sorted(p.name for p in previous.iterdir()) == [
        "checkpoint_last.pt", "metrics.csv", "model.pt", "run_settings.json"
    ]  # fmt: skip
    assert (previous / "metrics.csv").read_text() == "metrics.csv" and not model.exists()
    assert client.get_run(killed).info.status == "KILLED"
    guard.release()

    again = client.create_run(experiment, run_name="run").info.run_id
    guard = RunGuard(str(run), resume=True, tracking_uri=uri, run_name="run")
    guard.started(_Engine())
    assert client.get_run(again).info.status == "RUNNING"  # resume continues the run
    with pytest.raises(ValueError, match="boom"):
        guard.failed(_Engine(), ValueError("boom"))
    assert client.get_run(again).info.status == "FAILED"


@pytest.mark.slow
def test_short_run_validates_last_epoch_and_resume_extends_the_schedule(prepared, tiny, copy_bundle, tmp_path):
    """--max_epochs 2 with val_interval 5 still writes model.pt; resuming with --max_epochs 4 trains epochs 3-4."""
    root = copy_bundle("setr_kv", tmp_path)
    run_dir = tmp_path / "run"
    common = {**tiny, "datalist": str(prepared), "output_dir": str(run_dir), "val_interval": 5, "mlflow": False}
    _train(root, {**common, "max_epochs": 2})
    assert (root / "models" / "model.pt").is_file()
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[-1]["val_jaccard"] and not rows[0]["val_jaccard"]

    _train(root, {**common, "max_epochs": 4, "resume": True})
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and rows[-1]["val_jaccard"]
    from kvmonai.networks import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint_last.pt")
    assert ckpt["epoch"] == 4 and ckpt["lr_scheduler"]["total_steps"] == ckpt["lr_scheduler"]["last_epoch"]

    _train(root, {**common, "max_epochs": 1})  # fresh again: the 4-epoch run is moved aside, not overwritten
    (previous,) = (run_dir / "previous").iterdir()
    assert [r["epoch"] for r in _rows(previous)] == ["1", "2", "3", "4"] and [r["epoch"] for r in _rows(run_dir)] == [
        "1"
    ]


def test_study_fingerprint_names_what_changed(tmp_path):
    from kvmonai.study.fingerprint import reusable, run_fingerprint
    from kvmonai.study.runner import StudyConfig

    datalist = tmp_path / "datalist.json"
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    datalist.write_text(json.dumps({"training": [{"image": "img.nii.gz", "label": "img.nii.gz", "fold": 0}]}))
    cfg = StudyConfig(datalist=datalist, out=tmp_path / "out", pairs=[("setr", "kv")], preset="tiny", epochs=10)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "fingerprint.json").write_text(json.dumps(run_fingerprint(cfg, "setr", "kv", 0, 0)))
    assert reusable(run_dir, run_fingerprint(cfg, "setr", "kv", 0, 0)) == (True, "nothing")

    bigger = StudyConfig(**{**cfg.__dict__, "epochs": 30, "preset": "small"})
    same, changes = reusable(run_dir, run_fingerprint(bigger, "setr", "kv", 0, 0))
    assert not same and "preset 'tiny' -> 'small'" in changes and "epochs 10 -> 30" in changes

    os.utime(tmp_path / "img.nii.gz", ns=(1, 1))  # the volume was rewritten (prepare changed it)
    same, changes = reusable(run_dir, run_fingerprint(cfg, "setr", "kv", 0, 0))
    assert not same and changes == "data"


def test_failure_reason_is_the_root_cause():
    from kvmonai.study.runner import _root_cause

    try:
        try:
            raise FileNotFoundError("runs/x/model.pt: no such file")
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@evaluator.run()") from inner
    except RuntimeError as e:
        text = _root_cause(e)
    assert text.startswith("FileNotFoundError: runs/x/model.pt: no such file (in RuntimeError: Failed to evaluate")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--epochs", "-3"], "--epochs must be >= 1, got -3"),
        (["--epochs", "abc"], "--epochs takes an integer, got 'abc'"),
        (["--img-size", "0"], "--img-size must be >= 16, got 0"),
        (["--img-size", "100"], "--img-size must be a multiple of 16, got 100"),
        (["--val-interval", "0"], "--val-interval must be >= 1"),
    ],
)
def test_study_arguments_are_checked_before_work(argv, message, capsys, tmp_path):
    from kvmonai.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _datalist(path: Path, folds: list[int]) -> Path:
    path.write_text(json.dumps({"training": [{"image": f"{i}.nii.gz", "label": f"{i}.nii.gz", "fold": f}
                                             for i, f in enumerate(folds)]}))  # fmt: skip
    return path


def _settings(tmp_path: Path, **changes) -> dict:
    base = {
        "max_epochs": 3, "val_interval": 1, "img_size": 64, "volumes_per_batch": 2, "slices_per_volume": 4,
        "num_workers": 0, "fold": 0, "seed": 0, "datalist": str(_datalist(tmp_path / "dl.json", [0, 1, 1])),
        "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models"), "mlflow": False,
    }  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_epochs": "abc"}, r"max_epochs: expected an integer >= 1, got 'abc' \(--max_epochs N\)"),
        ({"max_epochs": 0}, "max_epochs: must be >= 1, got 0"),
        ({"img_size": 0}, "img_size: must be >= 16, got 0"),
        ({"img_size": 100}, "img_size: must be a multiple of 16, got 100"),
        ({"num_workers": -1}, "num_workers: must be >= 0"),
        ({"fold": 4}, r"fold: 4 is not in .*dl.json \(its folds: \[0, 1\]\)"),
        ({"fold": 1, "datalist": "ONE_FOLD"}, "the training split is empty"),
        ({"output_dir": "A_FILE/run"}, "output_dir: .*a_file is a file, not a folder"),
        ({"datalist": "MISSING"}, "datalist: .*missing.json does not exist; run kvmonai prepare first"),
    ],
)
def test_bundle_settings_are_checked_before_work(tmp_path, changes, message):
    from kvmonai.bundle.settings import SettingsError, check_train_settings

    (tmp_path / "a_file").write_text("x")
    resolve = {
        "ONE_FOLD": str(_datalist(tmp_path / "one.json", [1, 1])),
        "A_FILE/run": str(tmp_path / "a_file" / "run"),
        "MISSING": str(tmp_path / "missing.json"),
    }
    changes = {k: resolve.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(SettingsError, match=message):
        check_train_settings(**_settings(tmp_path, **changes))
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()


def test_unreachable_tracking_server_fails_fast(tmp_path, monkeypatch):
    import socket
    import time

    from kvmonai.bundle.settings import SettingsError, check_train_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(
        SettingsError, match=rf"MLflow tracking server http://127.0.0.1:{port} did not answer.*--mlflow false"
    ):
        check_train_settings(**_settings(tmp_path, mlflow=True))
    assert time.perf_counter() - start < 6


def test_bad_setting_on_the_command_line_is_one_line(prepared, copy_bundle, tmp_path):
    """``python -m monai.bundle run --max_epochs abc``: the message, no traceback, nothing written."""
    import subprocess
    import sys

    root = copy_bundle("setr_kv", tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--datalist",
           str(prepared), "--max_epochs", "abc", "--preset", "tiny", "--img_size", "64"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("KVMONAI_TRACEBACK", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "error: max_epochs: expected an integer >= 1, got 'abc'" in done.stderr
    assert "Traceback" not in done.stderr and not (root / "runs").exists()


def test_resuming_another_architecture_says_so_briefly(tmp_path):
    import torch

    from kvmonai.bundle import ResumeFromCheckpoint
    from kvmonai.networks import CheckpointError, create

    other = create("unetr", "kv", "tiny", img_size=64)
    torch.save({"model": other.state_dict(), "optimizer": {}, "lr_scheduler": {}, "trainer": {}}, tmp_path / "c.pt")
    net = create("setr", "kv", "tiny", img_size=64)
    handler = ResumeFromCheckpoint(
        str(tmp_path / "c.pt"), {"model": net, "optimizer": torch.optim.SGD(net.parameters(), 0.1)}
    )
    with pytest.raises(CheckpointError, match="another architecture, attention or preset") as info:
        handler(_Engine())
    assert len(str(info.value)) < 1200 and "(+" in str(info.value)  # first keys and a count, not every key


def test_read_only_output_is_named(tmp_path, monkeypatch):
    """A folder the user cannot write (simulated: the tests run as root, who may write anywhere)."""
    from kvmonai.bundle import settings

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(settings.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(settings.SettingsError, match=r"output_dir: .*locked is not writable; choose a folder you can"):
        settings.check_train_settings(**_settings(tmp_path, output_dir=str(locked / "run")))
