"""Bundle runs through the real command lines: interrupt and resume, an MLflow server, torchrun with 2 processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from kvmonai.networks import load_checkpoint

NAME = "setr_kv"


def bundle_cmd(root: Path, configs: list[str], overrides: dict) -> list[str]:
    files = [f"configs/{c}" for c in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def _epochs(csv_path: Path) -> list[int]:
    with open(csv_path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_interrupt_and_resume(prepared, tiny, copy_bundle, tmp_path):
    """Kill a CLI training run after its first epoch, resume it with one override: every epoch runs exactly once."""
    root = copy_bundle(NAME, tmp_path)
    overrides = {**tiny, "datalist": prepared, "max_epochs": 4, "slices_per_volume": 16, "volumes_per_batch": 1}
    run_dir = root / "runs" / f"{NAME}_fold0_seed0"
    ckpt = run_dir / "checkpoint_last.pt"
    proc = subprocess.Popen(
        bundle_cmd(root, ["train.json"], overrides),
        cwd=root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if ckpt.is_file():
                try:
                    if load_checkpoint(ckpt)["epoch"] >= 1:
                        break
                except Exception:  # the file is replaced atomically, but may appear between polls
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.5)  # somewhere in the next epoch
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = load_checkpoint(ckpt)["epoch"]  # the last complete epoch, whatever the kill interrupted
    assert 1 <= done < 4
    assert _epochs(run_dir / "metrics.csv")[-1] >= done

    def resume() -> subprocess.CompletedProcess:
        return subprocess.run(
            bundle_cmd(root, ["train.json"], {**overrides, "resume": True}),
            cwd=root,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    result = resume()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert f"after epoch {done}" in result.stdout + result.stderr
    assert load_checkpoint(ckpt)["epoch"] == 4
    assert _epochs(run_dir / "metrics.csv") == [1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{run_dir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kvmonai").experiment_id])
    assert len(runs) == 1  # the interrupted run is continued, not duplicated
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    # metrics are logged before the checkpoint is written: no epoch is ever missing; a kill between the two means
    # epoch done + 1 was logged, then trained and logged again after the resume
    assert sorted(set(steps)) == [1, 2, 3, 4]
    assert all(steps.count(s) == 1 for s in steps if s != done + 1), steps

    # resuming a finished run fails with a message that says what to do
    again = resume()
    assert again.returncode != 0 and "raise the number of epochs" in again.stderr


@pytest.mark.slow
def test_false_on_the_command_line_switches_off(prepared, tiny, copy_bundle, tmp_path):
    """``--mlflow false`` arrives as the string "false" (fire keeps unknown words as strings): it must mean off."""
    root = copy_bundle(NAME, tmp_path)
    overrides = {**tiny, "datalist": prepared, "mlflow": "false", "resume": "false"}
    result = subprocess.run(
        bundle_cmd(root, ["train.json"], overrides), cwd=root, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "runs" / f"{NAME}_fold0_seed0"
    assert (run_dir / "checkpoint_last.pt").is_file() and not (run_dir / "mlruns.db").exists()
    assert "resumed from" not in result.stdout + result.stderr


@pytest.mark.slow
def test_foreign_weights_give_a_clear_error(prepared, tiny, copy_bundle, tmp_path):
    root = copy_bundle(NAME, tmp_path)
    (root / "models").mkdir()
    torch.save({"model": {"not": torch.zeros(1)}}, root / "models" / "model.pt")
    image = Path(prepared).parent / json.loads(Path(prepared).read_text())["training"][0]["image"]
    overrides = {"preset": "tiny", "img_size": 64, "input_path": image, "output_dir": tmp_path / "out"}
    result = subprocess.run(
        bundle_cmd(root, ["inference.json"], overrides), cwd=root, env=_env(), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "do not fit" in result.stderr and "another architecture, attention variant or preset" in result.stderr
    (root / "models" / "model.pt").write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run(
        bundle_cmd(root, ["inference.json"], overrides), cwd=root, env=_env(), capture_output=True, text=True
    )
    assert result.returncode != 0 and "truncated or not a torch checkpoint" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server(prepared, tiny, copy_bundle, tmp_path):
    """A real `mlflow server` on 127.0.0.1: MLFLOW_TRACKING_URI sends the run there."""
    port = _free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
            "--artifacts-destination", str(server_dir / "artifacts"),
        ],
        env=_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        root = copy_bundle(NAME, tmp_path)
        result = subprocess.run(
            bundle_cmd(root, ["train.json"], {**tiny, "datalist": prepared}),
            cwd=root,
            env=_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("kvmonai").experiment_id])
        assert len(runs) == 1
        assert runs[0].data.params["attention"] == "kv" and "val_jaccard" in runs[0].data.metrics
        assert "training_curves.png" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
        assert not (root / "runs" / f"{NAME}_fold0_seed0" / "mlruns.db").exists()  # nothing went to the local store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


@pytest.mark.slow
def test_torchrun_two_processes(prepared, tiny, copy_bundle, tmp_path):
    """multi_gpu_train.json under torchrun with 2 CPU processes (gloo)."""
    root = copy_bundle(NAME, tmp_path)
    overrides = {**tiny, "datalist": prepared, "max_epochs": 2}

    def launch() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port())]
        cmd += bundle_cmd(root, ["train.json", "multi_gpu_train.json"], overrides)[1:]
        return subprocess.run(cmd, cwd=root, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)

    result = launch()
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        # seen once in ~10 CI runs: a rank aborted inside torch/gloo (SIGABRT, no Python error) in the middle of an
        # epoch; not reproduced in 5 local repeats. One fresh retry; a Python-level failure is never retried.
        shutil.rmtree(root / "runs", ignore_errors=True)
        first = result.stderr[-1500:]
        result = launch()
        assert result.returncode == 0, f"failed twice; first:\n{first}\nsecond:\n{result.stderr[-1500:]}"
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "runs" / f"{NAME}_fold0_seed0"
    assert _epochs(run_dir / "metrics.csv") == [1, 2]  # written by rank 0 only
    assert load_checkpoint(run_dir / "checkpoint_last.pt")["epoch"] == 2
    assert (root / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_two_trainings_in_one_folder(prepared, tiny, copy_bundle, tmp_path):
    """Reliability finding 3: the second training fails at once and the first finishes with all of its own data."""
    root = copy_bundle(NAME, tmp_path)
    run_dir = root / "runs" / f"{NAME}_fold0_seed0"
    first_cmd = bundle_cmd(
        root, ["train.json"], {**tiny, "datalist": prepared, "max_epochs": 3, "learning_rate": 0.001}
    )
    first = subprocess.Popen(first_cmd, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (run_dir / ".lock").is_file() or "pid" not in (run_dir / ".lock").read_text():
            assert first.poll() is None and time.time() < deadline, "the first training did not start"
            time.sleep(0.2)
        second = subprocess.run(
            bundle_cmd(root, ["train.json"], {**tiny, "datalist": prepared, "max_epochs": 3, "learning_rate": 0.05}),
            cwd=root, env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode != 0 and "is being written by another training (pid" in second.stderr
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert _epochs(run_dir / "metrics.csv") == [1, 2, 3]
    assert json.loads((run_dir / "run_settings.json").read_text())["learning_rate"] == 0.001
    assert not (run_dir / "previous").exists()  # the second one moved nothing aside
    client = MlflowClient(f"sqlite:///{run_dir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kvmonai").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.params["learning_rate"] == "0.001"
