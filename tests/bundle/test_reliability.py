"""State kept between runs: locks, moved-aside outputs, MLflow run states, resume with more epochs, last-epoch
validation, study fingerprints and argument checks (issue: reliability, findings 1-8)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kvmonai.bundle.handlers import RunGuard, RunInUseError
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
    from kvmonai.bundle.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint_last.pt")
    assert ckpt["epoch"] == 4 and ckpt["lr_scheduler"]["total_steps"] == ckpt["lr_scheduler"]["last_epoch"]

    _train(root, {**common, "max_epochs": 1})  # fresh again: the 4-epoch run is moved aside, not overwritten
    (previous,) = (run_dir / "previous").iterdir()
    assert [r["epoch"] for r in _rows(previous)] == ["1", "2", "3", "4"] and [r["epoch"] for r in _rows(run_dir)] == [
        "1"
    ]


def test_study_fingerprint_names_what_changed(tmp_path):
    from kvmonai.study.runner import StudyConfig, _reusable, run_fingerprint

    datalist = tmp_path / "datalist.json"
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    datalist.write_text(json.dumps({"training": [{"image": "img.nii.gz", "label": "img.nii.gz", "fold": 0}]}))
    cfg = StudyConfig(datalist=datalist, out=tmp_path / "out", pairs=[("setr", "kv")], preset="tiny", epochs=10)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "fingerprint.json").write_text(json.dumps(run_fingerprint(cfg, "setr", "kv", 0, 0)))
    assert _reusable(run_dir, run_fingerprint(cfg, "setr", "kv", 0, 0)) == (True, "nothing")

    bigger = StudyConfig(**{**cfg.__dict__, "epochs": 30, "preset": "small"})
    same, changes = _reusable(run_dir, run_fingerprint(bigger, "setr", "kv", 0, 0))
    assert not same and "preset 'tiny' -> 'small'" in changes and "epochs 10 -> 30" in changes

    os.utime(tmp_path / "img.nii.gz", ns=(1, 1))  # the volume was rewritten (prepare changed it)
    same, changes = _reusable(run_dir, run_fingerprint(cfg, "setr", "kv", 0, 0))
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
