"""Training under bf16 autocast on the CPU through a bundle's own train.json: the loss falls."""

from __future__ import annotations

import csv
import json

import pytest

from kvmonai.bundle import bundle_workflow

NAME = "cvt_kv"


def _train(root, overrides):
    wf = bundle_workflow(root, ["train.json"], "train", bundle_root=str(root), **overrides)
    wf.run()
    wf.finalize()
    run_dir = root / "runs" / f"{NAME}_fold0_seed0"
    with open(run_dir / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    return losses, json.loads((run_dir / "run_settings.json").read_text())


@pytest.mark.slow
def test_tiny_pair_trains_in_bf16_on_cpu(prepared, tiny, copy_bundle, tmp_path, monkeypatch):
    """``precision: bf16`` forces bf16 autocast (``auto`` would pick it only where the CPU has it natively)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_bundle(NAME, tmp_path)
    overrides = {**tiny, "datalist": str(prepared), "max_epochs": 6, "val_interval": 6, "mlflow": False}
    overrides.update(precision="bf16", learning_rate=0.01, volumes_per_batch=2, slices_per_volume=8)
    losses, settings = _train(root, overrides)
    assert settings["precision"] == "bfloat16"
    assert len(losses) == 6 and min(losses[-2:]) < 0.9 * losses[0], losses


@pytest.mark.slow
def test_amp_false_trains_in_fp32(prepared, tiny, copy_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_bundle(NAME, tmp_path)
    _, settings = _train(root, {**tiny, "datalist": str(prepared), "amp": "false", "mlflow": False})
    assert settings["precision"] == "fp32"
