"""The study report: the paper's table (with changes vs QKV and paired statistics), a CSV and charts."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmonai.utils import csv_text, markdown_table, write_text_atomic

__all__ = ["METRICS", "paired_difference", "summarise", "write_report"]

#: result columns aggregated over runs: key -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "jaccard": ("Jaccard", True),
    "weighted_jaccard": ("weighted Jaccard", True),
    "dice_large_bowel": ("Dice LB", True),
    "dice_small_bowel": ("Dice SB", True),
    "dice_stomach": ("Dice St", True),
    "score": ("comp. score", True),
    "latency_ms": ("latency ms", False),
}


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean of ``a - b`` over paired runs and its 95% confidence interval (Student t); no interval for one pair."""
    diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not diffs:
        return float("nan"), None, None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    from scipy.stats import t

    half = t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, attention): mean and std of each metric, changes vs QKV and paired differences.

    Reference networks (the CNN, ``kvmonai.networks.REFERENCES``) come last, marked ``reference: True``.
    """
    from kvmonai.networks import REFERENCES

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["attention"]), []).append(r)
    rows = []
    for (arch, attention), runs in groups.items():
        row: dict[str, Any] = {"arch": arch, "attention": attention, "runs": len(runs), "reference": arch in REFERENCES}
        row["params"], row["macs"] = runs[0]["params"], runs[0]["macs"]
        for key in ("latency_ratio", "latency_ratio_lo", "latency_ratio_hi"):
            if runs[0].get(key) is not None:
                row[key] = runs[0][key]
        for key in METRICS:
            row[key], row[f"{key}_std"] = _mean_std([r.get(key) for r in runs])
        twin = groups.get((arch, "qkv"))
        if attention != "qkv" and twin:
            row["params_change_pct"] = 100 * (row["params"] - twin[0]["params"]) / twin[0]["params"]
            row["macs_change_pct"] = 100 * (row["macs"] - twin[0]["macs"]) / twin[0]["macs"]
            by_key = {(r["fold"], r["seed"]): r for r in twin}
            paired = [(r, by_key[(r["fold"], r["seed"])]) for r in runs if (r["fold"], r["seed"]) in by_key]
            for key in ("jaccard", "weighted_jaccard", "score"):
                mean, lo, hi = paired_difference([p[0][key] for p in paired], [p[1][key] for p in paired])
                row[f"{key}_diff"], row[f"{key}_diff_lo"], row[f"{key}_diff_hi"] = mean, lo, hi
        rows.append(row)
    return sorted(rows, key=lambda r: r["reference"])  # stable: the pairs in run order, then the references


def _fmt(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["architecture", "attention", "params (M)", "Δ params", "GMACs", "Δ MACs"]
    head += [label for label, _ in METRICS.values()] + ["latency vs QKV"]
    table = []
    for r in rows:
        arch, attention = r["arch"], r["attention"]
        if r.get("reference"):
            arch, attention = f"{arch} (reference)", "none (CNN)"
        cells = [arch, attention, f"{r['params'] / 1e6:.2f}"]
        cells.append(f"{r['params_change_pct']:+.2f}%" if "params_change_pct" in r else "")
        cells.append(f"{r['macs'] / 1e9:.3f}")
        cells.append(f"{r['macs_change_pct']:+.2f}%" if "macs_change_pct" in r else "")
        for key in METRICS:
            text = _fmt(r[key], r[f"{key}_std"], 1 if key == "latency_ms" else 3)
            if (
                key in ("jaccard", "weighted_jaccard", "score")
                and f"{key}_diff" in r
                and not math.isnan(r[f"{key}_diff"])
            ):
                diff = r[f"{key}_diff"]
                ci = (
                    f", 95% CI [{r[f'{key}_diff_lo']:+.3f}, {r[f'{key}_diff_hi']:+.3f}]"
                    if r[f"{key}_diff_lo"] is not None
                    else ""
                )
                text += f" ({diff:+.3f}{ci})"
            cells.append(text)
        ratio = r.get("latency_ratio")
        cells.append(f"{ratio:.3f}× [{r['latency_ratio_lo']:.3f}, {r['latency_ratio_hi']:.3f}]" if ratio else "")
        table.append(cells)
    return markdown_table(head, table, ["left"] * 2 + ["right"] * (len(head) - 2))


def write_report(cfg: Any, results: Sequence[dict[str, Any]], failures: Sequence[dict[str, Any]]) -> Path:
    """Write ``report.md``, ``results.csv``, ``runs.csv`` and the charts to ``cfg.out``; returns the report path."""
    from kvmonai.study.plots import plot_accuracy_vs_macs, plot_predictions, plot_savings, plot_training_curves

    out = Path(cfg.out)
    rows = summarise(results)
    write_text_atomic(out / "results.csv", csv_text(rows))
    write_text_atomic(out / "runs.csv", csv_text(results))
    write_text_atomic(out / "failures.json", json.dumps(list(failures), indent=2) + "\n")
    verdict = _verdict_section(cfg, out)
    charts = []
    if rows:
        charts = [
            plot_accuracy_vs_macs(rows, out / "accuracy_vs_macs.png"),
            plot_savings(rows, out / "savings.png"),
            plot_training_curves(results, out / "training_curves.png"),
            plot_predictions(results, out / "predictions.png"),
        ]
    n_runs = len(results)
    lines = []
    if cfg.synthetic:
        lines.append(
            "**Data: the kvmonai synthetic stand-in, not real MRI. Numbers on synthetic data are no evidence "
            "about real MRI; they only show that the pipeline runs and the models learn.**"
        )
    else:
        lines.append(f"**Data: {cfg.data_note or cfg.datalist}.**")
    lines += [
        "",
        f"# KV vs QKV attention study `{cfg.name}`",
        "",
        *verdict,
        "## All pairs",
        "",
        f"- datalist: `{Path(cfg.datalist).resolve()}`; {cfg.data_note}",
        f"- preset `{cfg.preset}` at {cfg.img_size}x{cfg.img_size}, {cfg.epochs} epochs, folds {list(cfg.folds)}, "
        f"seeds {list(cfg.seeds)}, device `{cfg.device}`; {n_runs} finished runs, {len(failures)} failed",
        "- the same bundle recipe for every pair (see `bundles/*/docs/README.md`); parameters and MACs for one "
        "input of the trained size (batch 1); latency: median forward time of one slice (batch 1, "
        f"{cfg.device}), all trained networks of an architecture timed round-robin after training "
        f"({getattr(cfg, 'latency_repeats', 20)} rounds); latency vs QKV: median of the per-round ratios to the "
        "QKV twin [first, third quartile]",
        "- the last row is the CNN reference (MONAI BasicUNet, no attention), trained with the same recipe and "
        "data: it is not one of the KV/QKV pairs, it shows what the transformers cost and buy"
        if any(r.get("reference") for r in rows)
        else "- no CNN reference row (`--no-reference`)",
        "- Jaccard and weighted Jaccard pool the pixels of all validation volumes (the paper's metrics); Dice is "
        "the competition's per-slice Dice (slices empty in prediction and truth left out); the competition score "
        "is 0.4 Dice + 0.6 (1 - normalised 3D Hausdorff) per case-day volume",
        "- values are mean ± std over runs when there are several; for KV and KV+Pos, the number in brackets is "
        "the paired difference to the QKV twin (same fold and seed), with a 95% confidence interval when there "
        "are at least two pairs",
        "",
        _markdown_table(rows) if rows else "No run finished.",
        "",
    ]
    if failures:
        lines += ["## Failed runs", ""]
        lines += [f"- {f['arch']}_{f['attention']} fold {f['fold']} seed {f['seed']}: `{f['error']}`" for f in failures]
        lines.append("")
    if charts:
        lines += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    lines += [
        "Files: `results.csv` (this table), `runs.csv` (every run), `runs/<pair>_fold<F>_seed<S>/` (weights, "
        "checkpoints, metrics.csv, eval/summary.json, eval/per_case.csv), MLflow store `mlruns.db` "
        f"(`mlflow ui --backend-store-uri {cfg.tracking_uri}`).",
        "",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def _verdict_section(cfg: Any, out: Path) -> list[str]:
    """The verdict table, forest plot and plan for the top of the report (``verdict.csv`` written beside it)."""
    from kvmonai.study.pairing import VerdictError
    from kvmonai.study.plots import plot_forest
    from kvmonai.study.verdict import study_verdict
    from kvmonai.study.verdict_table import plan_markdown, verdict_markdown, write_verdict

    margin, alpha = getattr(cfg, "margin", 0.01), getattr(cfg, "alpha", 0.05)
    lines = ["## Verdict: is each variant as good as its QKV twin?", ""]
    try:
        rows = study_verdict(out, margin=margin, alpha=alpha)
    except VerdictError as e:
        (out / "verdict.csv").unlink(missing_ok=True)
        return [*lines, f"No verdict: {e}", ""]
    write_verdict(out, rows)
    plot = plot_forest(rows, "jaccard", out / "verdict_jaccard.png")
    level = f"{100 * (1 - alpha):g} %"
    one_seed = any(r["seeds"] < 2 for r in rows if r.get("diff") is not None)
    lines += [
        f"Paired difference of the pooled Jaccard to the QKV twin (same architecture, fold, seed and cases), its "
        f"{level} interval from a two-way cluster bootstrap over seeds and cases (folds as strata), and the verdict "
        f"at the margin δ = {margin:g}: inferior (upper bound < -δ), equivalent (within ±δ), superior (lower bound "
        "> +δ), non-inferior (lower bound > -δ), else inconclusive. Words and `p adj.` (the non-inferiority test) "
        "are Holm-adjusted across the pairs. All metrics and organs: `verdict.csv`; the method: `kvmonai verdict "
        "--help` and the README's study section.",
        "",
        verdict_markdown(rows, "jaccard"),
        "",
        f"![verdict]({plot.name})",
        "",
    ]
    if one_seed:
        lines += [
            "**Why inconclusive:** with one seed per fold the training noise (how much the difference changes from "
            "one seed to the next) cannot be estimated, and without it no interval covers the difference a new "
            "training would give. The intervals above (hollow in the plot) cover the case sampling only. Run a pilot "
            "with at least 3 seeds (`--seeds 0,1,2`), then `kvmonai verdict <study> --plan` gives the seeds a "
            "conclusive study needs.",
            "",
        ]
    lines += [
        f"How many seeds are enough (half-width of the {level} interval below δ/2 = {margin / 2:g}, "
        "`kvmonai verdict --plan`):",
        "",
        plan_markdown(rows, "jaccard"),
        "",
    ]
    return lines
