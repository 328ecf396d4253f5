"""The verdict: exact metrics from per-case sums, the statistics' error rates, words, Holm, bad input, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kvmonai.bundle.evaluation import EvaluationReport
from kvmonai.cli import main
from kvmonai.data import CLASSES
from kvmonai.study.pairing import VerdictError, load_comparisons, metric_values, read_per_case
from kvmonai.study.simulation import Scenario, error_rates, simulate_comparison
from kvmonai.study.verdict import compare, holm, study_verdict


def test_metrics_from_per_case_sums_equal_the_evaluation_summary(tmp_path):
    """Every summary metric is recomputed exactly from the per-case columns, for any subset of the volumes."""
    rng = np.random.default_rng(0)
    report = EvaluationReport(str(tmp_path), save_example=False)
    for i in range(6):
        label = torch.as_tensor(rng.random((3, 24, 24, 5)) > 0.7)
        label[0, ..., i % 5] = False  # some slices empty: Dice rows and distances left out
        if i == 2:
            label[2] = False  # stomach absent from this case-day entirely
        pred = label ^ torch.as_tensor(rng.random((3, 24, 24, 5)) > 0.9)
        if i == 2:
            pred[2] = False
        output = {"pred": pred.float(), "label": label.float(), "id": f"case{i // 2}_day{i % 2}"}
        report.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=[output], batch=[{}])))
    report.completed(SimpleNamespace(state=SimpleNamespace(metrics={})))
    summary = json.loads((tmp_path / "summary.json").read_text())
    cases, stats, volumes = read_per_case(tmp_path / "per_case.csv")
    assert cases == ["case0", "case1", "case2"] and len(volumes) == 6  # days grouped into their case
    total = stats.sum(0)
    assert metric_values(total, "jaccard") == pytest.approx(summary["jaccard"], abs=1e-6)
    assert metric_values(total, "weighted_jaccard") == pytest.approx(summary["weighted_jaccard"], abs=1e-6)
    assert metric_values(total, "score") == pytest.approx(summary["competition"]["skip"]["score"], abs=1e-5)
    for organ in CLASSES:
        assert metric_values(total, "jaccard", organ) == pytest.approx(summary["class_jaccard"][organ], abs=1e-6)
    # a weighted resample is the metric of the repeated volumes: case 1 twice, case 2 not at all
    repeated = stats[0] + 2 * stats[1]
    assert metric_values(np.array([1, 2, 0]) @ stats.reshape(3, -1), "jaccard") is not None
    np.testing.assert_allclose(
        metric_values(np.einsum("k,kcq->cq", np.array([1.0, 2.0, 0.0]), stats), "score"),
        metric_values(repeated, "score"),
    )


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_error_rates_of_the_verdict():
    """The simulation of docs/measured/verdict_simulation.md at fewer studies (fixed seeds: deterministic)."""
    alpha = 0.05
    at_margin = error_rates(Scenario(diff=-0.01), sims=400, seed=11)
    assert at_margin["claims non-inferiority"] <= alpha  # nominal alpha / 2 one-sided
    assert 0.93 <= at_margin["coverage"] <= 0.97
    powered = error_rates(Scenario(diff=0.0, seeds=10, folds=2), sims=200, seed=12)
    assert powered["claims non-inferiority"] >= 0.8
    assert 0.93 <= powered["coverage"] <= 0.97


def test_a_case_effect_shared_by_both_twins_leaves_the_interval_alone():
    """Pairing is real: a large difficulty shared by both twins cancels in the paired difference."""
    widths = {}
    for shared in (0.0, 0.2):
        rows = compare([simulate_comparison(Scenario(shared_sd=shared), np.random.default_rng(5))], n_boot=500)
        widths[shared] = rows[0]["hi"] - rows[0]["lo"]
    assert widths[0.2] == pytest.approx(widths[0.0], rel=0.02)


@pytest.mark.parametrize(
    ("diff", "word"), [(-0.05, "inferior"), (0.0, "equivalent"), (0.05, "superior"), (0.013, "non-inferior")]
)
def test_the_words(diff, word):
    scenario = Scenario(diff=diff, seeds=10, folds=2, cases=30)
    comparison = simulate_comparison(scenario, np.random.default_rng(3))
    row = compare([comparison], margin=0.01, n_boot=500)[0]
    assert row["verdict"] == word, row
    assert row["lo"] < row["diff"] < row["hi"]


def test_holm_across_pairs_can_withhold_a_word():
    """Alone a pair is non-inferior at p just below 0.025; among many null pairs Holm withholds the word."""
    rng = np.random.default_rng(4)
    comparisons = [simulate_comparison(Scenario(diff=-0.003), rng, name="a_kv")]
    comparisons += [simulate_comparison(Scenario(diff=-0.01), rng, name=f"x{i}_kv") for i in range(5)]
    alone = compare(comparisons[:1], n_boot=500)[0]
    together = compare(comparisons, n_boot=500)[0]
    assert together["p_adjusted"] >= alone["p_adjusted"]
    assert together["lo"] == pytest.approx(alone["lo"])  # the interval is the pair's own


def _write_run(study: Path, arch: str, attention: str, fold: int, seed: int, stats: np.ndarray, cases: list[str]):
    run_dir = study / "runs" / f"{arch}_{attention}_fold{fold}_seed{seed}"
    (run_dir / "eval").mkdir(parents=True)
    rows = []
    for case, s in zip(cases, stats, strict=True):
        row = {"id": f"{case}_day1", "case": case}
        for c, organ in enumerate(CLASSES):
            for j, name in enumerate(("tp", "fp", "fn", "dice_sum", "dice_rows")):
                row[f"{name}_{organ}"] = s[c, j]
            row[f"hausdorff_{organ}"] = s[c, 5] / s[c, 6] if s[c, 6] else ""
        rows.append(row)
    with open(run_dir / "eval" / "per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    jaccard = float(metric_values(stats.sum(0), "jaccard"))
    return {"arch": arch, "attention": attention, "fold": fold, "seed": seed, "jaccard": jaccard,
            "run_dir": str(run_dir)}  # fmt: skip


def _study(tmp_path: Path, seeds: int = 3, drop: tuple[int, int] | None = None) -> Path:
    study = tmp_path / "study"
    comparison = simulate_comparison(Scenario(seeds=seeds, cases=6, days=1, folds=2), np.random.default_rng(0))
    runs = []
    for fold, (stats, seed_ids, cases) in comparison.folds.items():
        for s in seed_ids:
            for m, attention in enumerate(("kv", "qkv")):
                if drop == (fold, s) and attention == "qkv":
                    continue
                runs.append(_write_run(study, "setr", attention, fold, s, stats[m, s], cases))
    with open(study / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    return study


def test_study_folder_verdict_and_cli(tmp_path, capsys):
    study = _study(tmp_path)
    rows = study_verdict(study, n_boot=300)
    pooled = [r for r in rows if r["organ"] == "all"]
    assert [(r["pair"], r["twin"], r["metric"]) for r in pooled] == [
        ("setr_kv", "setr_qkv", m) for m in ("jaccard", "weighted_jaccard", "score")
    ]
    assert {r["organ"] for r in rows if r["metric"] == "jaccard"} == {"all", *CLASSES}
    assert all(r["seeds"] == 3 and r["cases"] == 12 and r["runs"] == 6 for r in rows)
    assert main(["verdict", str(study), "--plan", "--bootstrap", "300"]) == 0
    out = capsys.readouterr().out
    assert "| setr_kv | setr_qkv |" in out and "seeds needed (all folds)" in out
    with open(study / "verdict.csv") as f:
        header = next(csv.reader(f))
    for column in ("pair", "twin", "metric", "organ", "diff", "lo", "hi", "margin", "verdict", "p_adjusted",
                   "seeds", "cases"):  # fmt: skip
        assert column in header
    assert (study / "verdict_jaccard.png").stat().st_size > 1000
    # the forest plot: one panel per organ, each pair's interval around its difference, the ±δ band
    import kvmonai.study.plots as plots

    saved = {}
    monkey = pytest.MonkeyPatch()
    monkey.setattr(plots, "save_figure", lambda fig, path: saved.setdefault("fig", fig))
    plots.plot_forest(rows, "jaccard", study / "x.png")
    monkey.undo()
    axes = saved["fig"].axes
    assert [ax.get_title() for ax in axes] == ["pooled", "large bowel", "small bowel", "stomach"]
    for ax, organ in zip(axes, ["all", *CLASSES], strict=True):
        r = next(r for r in rows if r["metric"] == "jaccard" and r["organ"] == organ)
        (bar,) = ax.containers
        assert bar.lines[0].get_xdata()[0] == pytest.approx(r["diff"])
        band = ax.patches[0]  # the ±δ band (a Rectangle from axvspan)
        assert band.get_x() == pytest.approx(-0.01) and band.get_x() + band.get_width() == pytest.approx(0.01)


def test_unpaired_runs_give_no_verdict_from_a_subset(tmp_path):
    study = _study(tmp_path, drop=(1, 2))
    rows = study_verdict(study, n_boot=300)
    assert {r["verdict"] for r in rows} == {"inconclusive"}
    assert "setr_kv fold 1 seed 2 has no setr_qkv twin" in rows[0]["reason"] and rows[0].get("diff") is None


def test_one_seed_is_inconclusive_with_the_reason(tmp_path):
    rows = study_verdict(_study(tmp_path, seeds=1), n_boot=300)
    assert {r["verdict"] for r in rows} == {"inconclusive"}
    assert "one seed per fold" in rows[0]["reason"] and rows[0]["seeds_needed"] is None


def test_bad_study_folders_name_what_is_wrong(tmp_path, capsys):
    study = _study(tmp_path)
    per_case = study / "runs" / "setr_qkv_fold0_seed1" / "eval" / "per_case.csv"
    text = per_case.read_text()
    per_case.write_text(text.replace(text.splitlines()[2].split(",")[2], "nan", 1))
    with pytest.raises(VerdictError, match=r"setr_qkv_fold0_seed1/eval/per_case.csv row 3 .*tp_large_bowel"):
        load_comparisons(study, check_summary=False)
    per_case.unlink()
    with pytest.raises(VerdictError, match="per_case.csv does not exist"):
        load_comparisons(study)
    assert main(["verdict", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "setr_qkv_fold0_seed1" in err[0]
    with pytest.raises(VerdictError, match="holds no runs.csv"):
        load_comparisons(tmp_path)
    good = _study(tmp_path / "other")
    with pytest.raises(VerdictError, match="--margin must be > 0"):
        study_verdict(good, margin=0)
    with pytest.raises(VerdictError, match="unknown metric 'dice'"):
        study_verdict(good, metrics=["dice"])


def test_twins_evaluated_on_different_cases_are_refused(tmp_path):
    study = _study(tmp_path)
    per_case = study / "runs" / "setr_qkv_fold0_seed0" / "eval" / "per_case.csv"
    per_case.write_text(per_case.read_text().replace("case0_0_day1", "case9_day1"))
    with pytest.raises(VerdictError, match="different case-days"):
        load_comparisons(study, check_summary=False)


@pytest.mark.slow
def test_kvmonai_verdict_on_a_two_seed_tiny_study(tmp_path, monkeypatch, capsys):
    """A real two-seed study (tiny preset, 2 cases x 2 days in fold 0), then `kvmonai verdict` on its folder."""
    from kvmonai.data.prepare import prepare_dataset
    from kvmonai.data.synth import write_synthetic_dataset

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_synthetic_dataset(tmp_path / "raw", cases=10, seed=1, days=2, slices=10, scale=0.25, progress=False)
    data = Path(prepare_dataset(tmp_path / "raw", tmp_path / "prepared", progress=False).datalist).parent
    out = tmp_path / "study"
    args = ["study", "--data", str(data), "--pairs", "setr_qkv,setr_kv", "--preset", "tiny", "--img-size", "64",
            "--epochs", "2", "--val-interval", "1", "--seeds", "0,1", "--no-reference", "--out", str(out),
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["verdict", str(out), "--bootstrap", "300"]) == 0
    printed = capsys.readouterr().out
    assert "| setr_kv | setr_qkv |" in printed
    with open(out / "verdict.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["metric"], r["organ"]) for r in rows} >= {("jaccard", "all"), ("score", "stomach")}
    for r in rows:
        assert (r["pair"], r["seeds"], r["runs"], r["cases"]) == ("setr_kv", "2", "2", "2")
        assert r["verdict"] in ("inferior", "equivalent", "superior", "non-inferior", "inconclusive")
        assert r["diff"] != "" or r["reason"]  # a difference, or why there is none
        if r["verdict"] == "inconclusive" and not r["reason"]:  # one pair: the interval holds -δ
            assert float(r["lo"]) <= -float(r["margin"]) <= float(r["hi"])
