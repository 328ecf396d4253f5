"""`kvmonai study` end to end at the tiny preset, resumability, failure isolation and the statistics."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kvmonai.cli import main
from kvmonai.data.prepare import prepare_dataset
from kvmonai.data.synth import write_synthetic_dataset
from kvmonai.study import StudyConfig, paired_difference, run_study, summarise

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study_data")
    write_synthetic_dataset(root / "raw", cases=5, seed=1, days=1, slices=10, scale=0.25, progress=False)
    return Path(prepare_dataset(root / "raw", root / "prepared", progress=False).datalist).parent


def test_two_pair_study_end_to_end(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    args = ["study", "--data", str(prepared), "--pairs", "setr_qkv,setr_kv", "--preset", "tiny", "--img-size", "64"]
    args += ["--epochs", "1", "--out", str(out), "--quiet", "--device", "cpu", "--val-interval", "1"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert report.splitlines()[0].startswith("**Data: the kvmonai synthetic stand-in, not real MRI.")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # the CNN reference is on by default and comes last, in its own row, not as a pair
    assert [(r["arch"], r["attention"]) for r in rows] == [("setr", "qkv"), ("setr", "kv"), ("unet", "cnn")]
    assert float(rows[1]["params_change_pct"]) < 0 and float(rows[1]["macs_change_pct"]) < 0
    assert [r["reference"] for r in rows] == ["False", "False", "True"] and not rows[2]["params_change_pct"]
    for r in rows:
        assert 0 <= float(r["jaccard"]) <= 1 and float(r["latency_ms"]) > 0
    # paired latency: the KV twin's ratio to QKV, with its quartiles around it; none for QKV and the reference
    assert float(rows[1]["latency_ratio_lo"]) <= float(rows[1]["latency_ratio"]) <= float(rows[1]["latency_ratio_hi"])
    assert not rows[0]["latency_ratio"] and not rows[2]["latency_ratio"]
    assert "| setr | kv |" in report and "Δ params" in report and "latency vs QKV" in report
    assert "| unet (reference) | none (CNN) |" in report and "the last row is the CNN reference" in report
    for chart in ("accuracy_vs_macs", "savings", "training_curves", "predictions"):
        assert (out / f"{chart}.png").stat().st_size > 1000, chart

    client = MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(f"kvmonai-study-{out.name}")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kvmonai_study") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    names = ["setr_kv_fold0_seed0", "setr_qkv_fold0_seed0", "unet_cnn_fold0_seed0"]
    assert sorted(r.info.run_name for r in children) == names
    assert all("eval_jaccard" in r.data.metrics and "val_jaccard" in r.data.metrics for r in children)
    assert "report.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}

    # a re-run finds every run finished and only rewrites the report
    stamp = (out / "runs" / "setr_kv_fold0_seed0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "setr_kv_fold0_seed0" / "result.json").stat().st_mtime_ns == stamp

    # a run interrupted after training (checkpoint of the last epoch, no result) is evaluated, not retrained
    run_dir = out / "runs" / "setr_qkv_fold0_seed0"
    (run_dir / "result.json").unlink()
    weights = (run_dir / "model.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (run_dir / "result.json").is_file() and (run_dir / "model.pt").stat().st_mtime_ns == weights
    with open(run_dir / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]


def test_a_failing_pair_does_not_lose_the_others(prepared, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundles = tmp_path / "bundles"
    for name in ("setr_qkv", "setr_kv"):
        shutil.copytree(REPO / "bundles" / name, bundles / name)
    (bundles / "setr_kv" / "configs" / "train.json").write_text("{ broken")
    cfg = StudyConfig(
        datalist=prepared / "datalist.json", out=tmp_path / "out", pairs=[("setr", "kv"), ("setr", "qkv")],
        preset="tiny", img_size=64, epochs=1, bundles=bundles, synthetic=True, reference=False,
    )  # fmt: skip
    outcome = run_study(cfg, progress=False)
    assert [(r["arch"], r["attention"]) for r in outcome["results"]] == [("setr", "qkv")]
    assert len(outcome["failures"]) == 1 and outcome["failures"][0]["attention"] == "kv"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed runs" in report and "setr_kv fold 0 seed 0" in report
    assert json.loads((tmp_path / "out" / "failures.json").read_text())[0]["arch"] == "setr"


def test_paired_difference_by_hand():
    mean, lo, hi = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])  # differences 0.1, 0.0, 0.2
    assert mean == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (lo, hi) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert paired_difference([0.5], [0.4])[1:] == (None, None)


def test_summarise_changes_and_spread():
    base = {"arch": "a", "params": 100, "macs": 1000, "latency_ms": 1.0, "score": 0.5, "weighted_jaccard": 0.5}
    runs = [
        {**base, "attention": "qkv", "fold": 0, "seed": 0, "jaccard": 0.5},
        {**base, "attention": "qkv", "fold": 0, "seed": 1, "jaccard": 0.7},
        {**base, "attention": "kv", "fold": 0, "seed": 0, "jaccard": 0.6, "params": 90, "macs": 950},
        {**base, "attention": "kv", "fold": 0, "seed": 1, "jaccard": 0.6, "params": 90, "macs": 950},
    ]
    rows = {r["attention"]: r for r in summarise(runs)}
    assert rows["qkv"]["jaccard"] == pytest.approx(0.6) and rows["qkv"]["jaccard_std"] == pytest.approx(0.141421356)
    assert rows["kv"]["params_change_pct"] == pytest.approx(-10.0) and rows["kv"]["macs_change_pct"] == pytest.approx(
        -5
    )
    assert rows["kv"]["jaccard_diff"] == pytest.approx(0.0)
