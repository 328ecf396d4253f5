"""`kvmonai study` end to end at the tiny preset, resumability, failure isolation and the statistics."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

import kvmonai.study.plots as plots
from kvmonai.cli import main
from kvmonai.data.prepare import prepare_dataset
from kvmonai.data.synth import write_synthetic_dataset
from kvmonai.networks import REFERENCES
from kvmonai.study import StudyConfig, paired_difference, run_study, summarise

REPO = Path(__file__).resolve().parents[2]
CHARTS = {
    "accuracy_vs_macs": "plot_accuracy_vs_macs",
    "savings": "plot_savings",
    "training_curves": "plot_training_curves",
    "predictions": "plot_predictions",
}


@pytest.fixture
def charts(monkeypatch) -> dict[str, dict[str, Any]]:
    """``{"data": {chart: rows handed to its plot function}, "figure": {chart: the figure it saved}}``.

    The plot functions run unchanged and still write their files.
    """
    seen: dict[str, dict[str, Any]] = {"data": {}, "figure": {}}
    save = plots.save_figure

    def save_spy(fig, path, *args, **kwargs):
        seen["figure"][Path(path).stem] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", save_spy)
    for chart, name in CHARTS.items():
        plot = getattr(plots, name)

        def plot_spy(rows, path, *args, _plot=plot, _chart=chart, **kwargs):
            seen["data"][_chart] = rows = list(rows)
            return _plot(rows, path, *args, **kwargs)

        monkeypatch.setattr(plots, name, plot_spy)
    return seen


def _curve(run_dir: str) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.isclose(rgb[..., 0], rgb[..., 1]) & np.isclose(rgb[..., 1], rgb[..., 2])


def _assert_charts_show_their_data(charts: dict[str, dict[str, Any]]) -> None:
    """Every chart holds exactly the numbers, curves and masks it was handed, under the right labels."""
    data, figure = charts["data"], charts["figure"]
    assert set(figure) - {"verdict_jaccard"} == set(CHARTS)  # the verdict's forest plot: tests/study/test_verdict.py

    # accuracy vs compute: one point per pair at (GMACs, Jaccard) with a ± std bar; one colour per architecture
    rows = data["accuracy_vs_macs"]
    (ax,) = figure["accuracy_vs_macs"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("GMACs per slice", "validation Jaccard")
    points = [c.lines[0] for c in ax.containers]
    np.testing.assert_allclose([p.get_xdata()[0] for p in points], [r["macs"] / 1e9 for r in rows])
    np.testing.assert_allclose([p.get_ydata()[0] for p in points], [r["jaccard"] for r in rows])
    spans = [np.ptp(c.lines[2][0].get_segments()[0][:, 1]) / 2 for c in ax.containers]
    np.testing.assert_allclose(spans, [r["jaccard_std"] or 0 for r in rows])
    colour = {r["arch"]: p.get_color() for r, p in zip(rows, points, strict=True)}
    assert all(p.get_color() == colour[r["arch"]] for r, p in zip(rows, points, strict=True))
    assert len({str(c) for c in colour.values()}) == len(colour)
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {r["arch"] for r in rows} | {r["attention"] for r in rows} <= legend

    # savings: per architecture, one bar per variant, its height the change vs QKV in % (absent: no bar height)
    rows = data["savings"]
    change = {(r["arch"], r["attention"]): r for r in rows if "params_change_pct" in r}
    archs = list(dict.fromkeys(a for a, _ in change))
    panels = figure["savings"].axes
    for ax, key in zip(panels, ("params_change_pct", "macs_change_pct"), strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == archs
        assert [bars.get_label() for bars in ax.containers] == ["kv", "kvpos"]
        for bars in ax.containers:
            expected = [change[a, bars.get_label()][key] if (a, bars.get_label()) in change else np.nan for a in archs]
            np.testing.assert_allclose([b.get_height() for b in bars], expected)

    # training curves: per architecture, the loss (top) and validation Jaccard (bottom) of each attention's first run
    results = data["training_curves"]
    archs = list(dict.fromkeys(r["arch"] for r in results))
    fig = figure["training_curves"]
    for arch, top, bottom in zip(archs, fig.axes[: len(archs)], fig.axes[len(archs) :], strict=True):
        assert top.get_title() == arch
        first: dict[str, dict[str, Any]] = {}
        for r in results:
            if r["arch"] == arch:
                first.setdefault(r["attention"], r)
        loss = {line.get_label(): line for line in top.get_lines()}
        val = {line.get_label(): line for line in bottom.get_lines()}
        assert set(loss) == set(first)
        for attention, r in first.items():
            curve = _curve(r["run_dir"])
            np.testing.assert_array_equal(loss[attention].get_xdata(), [int(c["epoch"]) for c in curve])
            np.testing.assert_allclose(loss[attention].get_ydata(), [float(c["train_loss"]) for c in curve])
            validated = [c for c in curve if c.get("val_jaccard")]
            if validated:
                np.testing.assert_array_equal(val[attention].get_xdata(), [int(c["epoch"]) for c in validated])
                np.testing.assert_allclose(val[attention].get_ydata(), [float(c["val_jaccard"]) for c in validated])
            else:
                assert attention not in val

    # predictions: per architecture the truth, then QKV (or the CNN reference) and KV; colour exactly on the masks
    results = data["predictions"]
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        if (Path(r["run_dir"]) / "eval" / "examples.npz").is_file():
            column = "qkv" if r["arch"] in REFERENCES else r["attention"]
            if column in ("qkv", "kv"):
                chosen.setdefault(r["arch"], {}).setdefault(column, r)
    panels = figure["predictions"].axes
    assert len(panels) == 3 * len(chosen)
    for i, (arch, runs) in enumerate(chosen.items()):
        truth, *columns = panels[3 * i : 3 * i + 3]
        example = np.load(Path(next(iter(runs.values()))["run_dir"]) / "eval" / "examples.npz")
        assert truth.get_title() == f"{arch}: truth"
        np.testing.assert_array_equal(~_grey(truth.images[0].get_array()), example["label"].any(axis=0))
        for ax, column in zip(columns, ("qkv", "kv"), strict=True):
            if column not in runs:
                assert not ax.images
                continue
            r = runs[column]
            pred = np.load(Path(r["run_dir"]) / "eval" / "examples.npz")["pred"]
            assert ax.get_title() == f"{r['attention']} (Jaccard {r['jaccard']:.2f})"
            np.testing.assert_array_equal(~_grey(ax.images[0].get_array()), pred.any(axis=0))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study_data")
    write_synthetic_dataset(root / "raw", cases=5, seed=1, days=1, slices=10, scale=0.25, progress=False)
    return Path(prepare_dataset(root / "raw", root / "prepared", progress=False).datalist).parent


@pytest.mark.slow
def test_two_pair_study_end_to_end(prepared, tmp_path, monkeypatch, capsys, charts):
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
    for chart in CHARTS:
        assert (out / f"{chart}.png").stat().st_size > 1000, chart
    assert len(charts["data"]["predictions"]) == 3  # every run, the CNN reference included
    _assert_charts_show_their_data(charts)

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
    # the verdict: at one seed inconclusive, with the reason, at the top of the report and in MLflow
    assert report.index("## Verdict") < report.index("## All pairs") and "**Why inconclusive:**" in report
    with open(out / "verdict.csv") as f:
        verdict = list(csv.DictReader(f))
    assert {(r["pair"], r["twin"], r["verdict"]) for r in verdict} == {("setr_kv", "setr_qkv", "inconclusive")}
    assert parents[0].data.tags["verdict_setr_kv_jaccard"] == "inconclusive"
    assert {"verdict.csv", "verdict_jaccard.png"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert (out / "runs" / "setr_kv_fold0_seed0" / "run.log").stat().st_size > 0  # the run's log, not the terminal

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


def test_charts_show_what_they_are_handed(tmp_path, charts):
    """The four charts from hand-made runs (no training): points, bars, curves and masks are exactly the data."""
    rng = np.random.default_rng(0)
    results = []
    for arch, attention, params, macs, jaccard in (
        ("setr", "qkv", 100, 4e9, 0.5), ("setr", "kv", 80, 3e9, 0.55), ("setr", "kvpos", 82, 3.1e9, 0.45),
        ("cvt", "qkv", 50, 2e9, 0.3), ("cvt", "kv", 45, 1.5e9, 0.35), ("unet", "cnn", 30, 1e9, 0.6),
    ):  # fmt: skip
        for seed in (0, 1):
            run_dir = tmp_path / f"{arch}_{attention}_{seed}"
            (run_dir / "eval").mkdir(parents=True)
            curve = "".join(f"{e},{v},{0.4 if e == 2 else ''}\n" for e, v in enumerate(rng.uniform(0.2, 1, 3), 1))
            (run_dir / "metrics.csv").write_text("epoch,train_loss,val_jaccard\n" + curve)  # validated once
            masks = rng.random((2, 3, 12, 12)) > 0.8
            np.savez(run_dir / "eval" / "examples.npz", image=rng.random((12, 12)), label=masks[0], pred=masks[1])
            results.append(
                {"arch": arch, "attention": attention, "fold": 0, "seed": seed, "params": params, "macs": macs,
                 "jaccard": jaccard + 0.02 * seed, "weighted_jaccard": jaccard, "score": jaccard,
                 "run_dir": str(run_dir)}
            )  # fmt: skip
    rows = summarise(results)
    plots.plot_accuracy_vs_macs(rows, tmp_path / "accuracy_vs_macs.png")
    plots.plot_savings(rows, tmp_path / "savings.png")
    plots.plot_training_curves(results, tmp_path / "training_curves.png")
    plots.plot_predictions(results, tmp_path / "predictions.png")
    _assert_charts_show_their_data(charts)
    # by hand: SETR KV has 20 % fewer parameters than its QKV twin; CvT has no KV+Pos bar
    savings = charts["figure"]["savings"].axes[0].containers
    np.testing.assert_allclose([b.get_height() for b in savings[0]], [-20.0, -10.0])
    assert math.isnan(savings[1][1].get_height())


@pytest.mark.slow
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


def test_study_rejects_bad_integer_lists(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--folds", "0,one"])
    assert "comma-separated integers for --folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--seeds", "0,-1"])
    assert "integers >= 0 for --seeds" in capsys.readouterr().err


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
