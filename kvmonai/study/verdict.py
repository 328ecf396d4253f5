"""The verdict: is each attention variant as good as its QKV twin, within a margin?

The paper's claim is one of *similar* accuracy, a non-inferiority (or equivalence) claim, which a test of "no
difference" cannot show. This module turns a finished study into one word per compared pair, metric and organ:

* **Pairing.** A variant's run is paired with its QKV twin of the same architecture, fold and seed, and the two are
  compared on the same validation cases (``eval/per_case.csv`` of both runs, joined by case-day). Every summary metric
  of a run (Jaccard and weighted Jaccard with pixels pooled over the volumes, the competition score) is a function of
  per-volume sums, which ``EvaluationReport`` writes per case-day (true/false positives, false negatives, Dice sums,
  Hausdorff distances), so any resample of the cases gives the metric exactly, not an approximation of it.
* **The design is crossed.** Every seed's network is evaluated on the same cases, so a case that favours one variant
  favours it under every seed: seeds and cases are two crossed random factors of the paired difference, with folds
  as strata (each case belongs to one fold). Resampling cases independently within each seed (a nested bootstrap)
  would miss that shared case effect and understate the interval.
* **Two-way cluster bootstrap.** Within each fold, seeds and cases (a case is a patient: all its days together)
  are drawn with replacement, the same draws for both twins (the pairing), ``n - 1`` draws out of ``n`` at each
  level so that the variance of a mean is not biased low by ``(n - 1) / n`` with few seeds (Davison and Hinkley
  1997, section 3.8). Seed-only, case-only and two-way replicates split the variance of the difference into a seed
  (training noise), a case and a seed x case component: the two-way bootstrap counts the interaction three times
  (McCullagh 2000, "Resampling and exchangeable arrays"; Owen 2007, "The pigeonhole bootstrap"), so the interaction
  is ``V_both - V_seed - V_case`` and is taken out of the other two. The interval is
  ``diff ± sqrt(sum_i t(df_i)^2 v_i)`` over the three components, each with its own degrees of freedom (seeds
  ``S - 1``, cases ``K - 1``, interaction their product, summed over folds), after Banerjee (1961): a percentile
  interval, or one Satterthwaite df, is too narrow when the seed component dominates at three to five seeds.
* **Verdict** at margin ``δ``, decided in this order from the two-sided ``1 - alpha`` interval: ``inferior``
  (upper bound < -δ), ``equivalent`` (the interval within ±δ), ``superior`` (lower bound > +δ), ``non-inferior``
  (lower bound > -δ), else ``inconclusive``. Each condition is a one-sided test at ``alpha / 2``; across the pairs of
  a study (per metric and organ) their p-values are Holm-adjusted and the word is read from the adjusted p-values,
  so the family-wise error of each kind of claim is at most ``alpha / 2``. ``p_adjusted`` is the Holm-adjusted
  p-value of the non-inferiority test (H0: difference <= -δ); non-inferiority is declared when it is below
  ``alpha / 2``.
* **How many runs are enough**: the seed and interaction components shrink with more seeds, the case component does
  not (the same cases are evaluated), so the plan gives the number of seeds at which the half-width falls below
  ``δ / 2``, at the study's folds and at all folds of the datalist, or says that the cases alone are too few.

The nested design's known limits are stated in the report: folds are fixed strata (the interval is about this
dataset's cases and the training noise, not about other training sets; Nadeau and Bengio 2003 discuss the
latter), and with one seed the training noise cannot be estimated, so every word is ``inconclusive``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvmonai.data import CLASSES
from kvmonai.paths import bundle_name
from kvmonai.utils import csv_text, markdown_table, write_text_atomic

__all__ = [
    "METRICS",
    "POOLED",
    "STATS",
    "VERDICTS",
    "Comparison",
    "VerdictError",
    "compare",
    "holm",
    "load_comparisons",
    "metric_values",
    "plan_markdown",
    "plan_seeds",
    "read_per_case",
    "read_verdict",
    "study_verdict",
    "verdict_lines",
    "verdict_markdown",
    "write_verdict",
]

#: metrics a verdict can be given on (all on a 0-1 scale, higher is better)
METRICS: tuple[str, ...] = ("jaccard", "weighted_jaccard", "score")
#: the organ column's value for the pooled (all organs) comparison
POOLED = "all"
#: the words, in the order they are decided
VERDICTS: tuple[str, ...] = ("inferior", "equivalent", "superior", "non-inferior", "inconclusive")
#: per volume and class, the sums every metric is computed from (the last axis of the statistics arrays)
STATS: tuple[str, ...] = ("tp", "fp", "fn", "dice_sum", "dice_rows", "hd_sum", "hd_n")
_CSV_FIELDS = [
    "pair", "twin", "metric", "organ", "diff", "lo", "hi", "margin", "verdict", "p_adjusted", "seeds", "cases",
    "folds", "runs", "se", "var_seed", "var_case", "var_interaction", "fold_sd", "seeds_needed",
    "seeds_needed_all_folds", "reason",
]  # fmt: skip


class VerdictError(ValueError):
    """A study folder or argument the verdict cannot use; the message names the run, case, file or argument."""


@dataclass
class Comparison:
    """A variant and its QKV twin: per fold, their per-case statistics under every seed.

    Args:
        pair: the variant's bundle name (``setr_kv``).
        twin: its QKV twin's (``setr_qkv``).
        folds: ``fold -> (stats, seeds, cases)``; ``stats`` is ``(2, S, K, C, 7)`` (variant, twin) x seeds x
            cases x classes x :data:`STATS`, summed over the days of each case.
        reason: why no verdict can be given (unpaired or missing runs); ``None`` when it can.
    """

    pair: str
    twin: str
    folds: dict[int, tuple[np.ndarray, list[int], list[str]]] = field(default_factory=dict)
    reason: str | None = None

    @property
    def seeds(self) -> int:
        return max((len(s) for _, s, _ in self.folds.values()), default=0)

    @property
    def cases(self) -> int:
        return sum(len(c) for _, _, c in self.folds.values())

    @property
    def runs(self) -> int:
        return sum(len(s) for _, s, _ in self.folds.values())


def _organ_index(organ: str) -> int | None:
    if organ == POOLED:
        return None
    if organ not in CLASSES:
        raise VerdictError(f"unknown organ {organ!r}; use {POOLED!r} or one of {', '.join(CLASSES)}.")
    return CLASSES.index(organ)


def metric_values(stats: np.ndarray, metric: str, organ: str = POOLED) -> np.ndarray:
    """A summary metric from summed per-class statistics, exactly as ``EvaluationReport`` computes it.

    Args:
        stats: ``(..., C, 7)`` sums of :data:`STATS` over a set of volumes.
        metric: one of :data:`METRICS`.
        organ: :data:`POOLED` or one of ``kvmonai.data.CLASSES``; an organ's weighted Jaccard is its Jaccard.

    Returns:
        the metric over the leading axes; NaN where it is undefined (no pixel of the organ anywhere).

    Raises:
        VerdictError: on an unknown metric or organ.
    """
    if metric not in METRICS:
        raise VerdictError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    c = _organ_index(organ)
    s = np.asarray(stats, dtype=np.float64)
    tp, fp, fn, dice_sum, dice_rows, hd_sum, hd_n = (s[..., i] for i in range(7))
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric in ("jaccard", "weighted_jaccard"):
            union = tp + fp + fn
            iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
            if c is not None:
                return iou[..., c]
            valid = ~np.isnan(iou)
            if metric == "jaccard":
                n = valid.sum(-1)
                return np.where(n > 0, np.where(valid, iou, 0).sum(-1) / np.maximum(n, 1), np.nan)
            support = np.where(valid, tp + fn, 0)
            total = support.sum(-1)
            return np.where(
                total > 0, (np.where(valid, iou, 0) * support).sum(-1) / np.where(total > 0, total, 1), np.nan
            )
        if c is not None:
            dice_sum, dice_rows, hd_sum, hd_n = dice_sum[..., c], dice_rows[..., c], hd_sum[..., c], hd_n[..., c]
        else:
            dice_sum, dice_rows, hd_sum, hd_n = dice_sum.sum(-1), dice_rows.sum(-1), hd_sum.sum(-1), hd_n.sum(-1)
        return 0.4 * (dice_sum / dice_rows) + 0.6 * (1.0 - hd_sum / hd_n)


def _float(value: str, path: Path, row: int, column: str) -> float:
    try:
        return float(value) if value != "" else math.nan
    except ValueError:
        raise VerdictError(f"{path} row {row}: {column} is {value!r}, not a number.") from None


def read_per_case(path: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """One run's ``eval/per_case.csv`` as per-case statistics.

    Args:
        path: the CSV written by ``kvmonai.bundle.EvaluationReport``.

    Returns:
        ``(cases, stats, volumes)``: the case (patient) ids in order of first appearance, their statistics
        ``(K, C, 7)`` summed over each case's days, and the case-day ids.

    Raises:
        VerdictError: the file is missing, lacks the count columns (written by an older kvmonai), repeats a
            case-day, or holds a NaN count.
    """
    path = Path(path)
    if not path.is_file():
        raise VerdictError(f"{path} does not exist: the run was not evaluated; re-run the study to evaluate it.")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = [f"{s}_{c}" for c in CLASSES for s in ("tp", "fp", "fn", "dice_sum", "dice_rows", "hausdorff")]
    missing = [n for n in need if rows and n not in rows[0]]
    if not rows or missing:
        what = "no case" if not rows else f"no column {missing[0]} (written by an older kvmonai)"
        raise VerdictError(f"{path}: {what}; re-run `kvmonai study` with the same options to re-evaluate the run.")
    cases: dict[str, np.ndarray] = {}
    volumes: list[str] = []
    for i, row in enumerate(rows, start=2):
        volume = row["id"]
        if volume in volumes:
            raise VerdictError(f"{path} row {i}: case-day {volume!r} appears twice.")
        volumes.append(volume)
        stats = np.zeros((len(CLASSES), len(STATS)))
        for c, organ in enumerate(CLASSES):
            for j, name in enumerate(("tp", "fp", "fn", "dice_sum", "dice_rows")):
                v = _float(row[f"{name}_{organ}"], path, i, f"{name}_{organ}")
                if math.isnan(v):
                    raise VerdictError(f"{path} row {i} (case-day {volume}): {name}_{organ} is missing or NaN.")
                stats[c, j] = v
            hd = _float(row[f"hausdorff_{organ}"], path, i, f"hausdorff_{organ}")
            stats[c, 5], stats[c, 6] = (0.0, 0.0) if math.isnan(hd) else (hd, 1.0)
        case = row.get("case") or volume
        cases[case] = cases[case] + stats if case in cases else stats
    return list(cases), np.stack(list(cases.values())), volumes


def _runs_of(study: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The finished and failed runs of the study's latest report (``runs.csv``, ``failures.json``)."""
    runs_csv = study / "runs.csv"
    if not runs_csv.is_file():
        raise VerdictError(f"{study} holds no runs.csv: not a finished `kvmonai study` folder.")
    with open(runs_csv, newline="") as f:
        runs = list(csv.DictReader(f))
    failures_path = study / "failures.json"
    failures = json.loads(failures_path.read_text()) if failures_path.is_file() else []
    for i, r in enumerate(runs, start=2):
        for key in ("arch", "attention", "fold", "seed"):
            if not r.get(key):
                raise VerdictError(f"{runs_csv} row {i}: no {key}.")
    return runs, failures


def load_comparisons(study: str | Path, check_summary: bool = True) -> list[Comparison]:
    """Pair every non-QKV run of a finished study with its QKV twin (same architecture, fold and seed).

    A pair whose runs cannot all be paired gets a :class:`Comparison` with a ``reason`` and no data: its verdict is
    ``inconclusive``, never one computed from the subset that could be paired.

    Args:
        study: the study folder (``results/<name>``).
        check_summary: check that each run's Jaccard recomputed from ``per_case.csv`` equals its ``runs.csv`` value.

    Raises:
        VerdictError: on a folder that is not a study, a run whose ``per_case.csv`` is missing or broken, or twins
            evaluated on different case-days.
    """
    from kvmonai.networks import REFERENCES

    study = Path(study)
    runs, failures = _runs_of(study)
    by_pair: dict[tuple[str, str], dict[tuple[int, int], dict[str, Any]]] = {}
    for r in runs:
        by_pair.setdefault((r["arch"], r["attention"]), {})[(int(r["fold"]), int(r["seed"]))] = r
    failed = {(f["arch"], f["attention"], int(f["fold"]), int(f["seed"])) for f in failures}
    variants = sorted({(a, t) for a, t in by_pair} | {(f[0], f[1]) for f in failed}, key=str)
    out = []
    for arch, attention in variants:
        if attention == "qkv" or arch in REFERENCES:
            continue
        comparison = Comparison(bundle_name(arch, attention), bundle_name(arch, "qkv"))
        out.append(comparison)
        mine, twins = by_pair.get((arch, attention), {}), by_pair.get((arch, "qkv"), {})
        problems = [
            f"{a}_{t} fold {f} seed {s} failed"
            for a, t, f, s in sorted(failed)
            if a == arch and t in (attention, "qkv")
        ]
        problems += [
            f"{comparison.pair} fold {f} seed {s} has no {comparison.twin} twin"
            for f, s in sorted(set(mine) - set(twins))
        ]
        problems += [
            f"{comparison.twin} fold {f} seed {s} has no {comparison.pair} twin"
            for f, s in sorted(set(twins) - set(mine))
        ]
        if not twins:
            problems = [f"no {comparison.twin} run in this study"]
        if problems:
            comparison.reason = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            continue
        folds: dict[int, dict[int, tuple[np.ndarray, list[str], Path]]] = {}
        for (fold, seed), run in sorted(mine.items()):
            pair_stats = []
            for r in (run, twins[(fold, seed)]):
                run_dir = study / "runs" / Path(r["run_dir"]).name
                cases, stats, volumes = read_per_case(run_dir / "eval" / "per_case.csv")
                if check_summary and r.get("jaccard"):
                    recomputed = float(metric_values(stats.sum(0), "jaccard"))
                    if abs(recomputed - float(r["jaccard"])) > 1e-5:
                        raise VerdictError(
                            f"{run_dir}: Jaccard from eval/per_case.csv ({recomputed:.6f}) differs from runs.csv "
                            f"({float(r['jaccard']):.6f}); the run folder was changed after the report was written."
                        )
                pair_stats.append((cases, stats, set(volumes), run_dir))
            (cases, stats, vols, run_dir), (twin_cases, twin_stats, twin_vols, twin_dir) = pair_stats
            if vols != twin_vols:
                diff = sorted(vols ^ twin_vols)
                raise VerdictError(
                    f"{run_dir.name} and {twin_dir.name} were evaluated on different case-days (e.g. {diff[0]}); "
                    "re-run both with the same datalist."
                )
            order = [twin_cases.index(c) for c in cases]
            folds.setdefault(fold, {})[seed] = (np.stack([stats, twin_stats[order]]), cases, run_dir)
        for fold, seeds in folds.items():
            first = next(iter(seeds.values()))
            cases = first[1]
            stacked = []
            for seed_stats, seed_cases, run_dir in seeds.values():
                if set(seed_cases) != set(cases):
                    raise VerdictError(
                        f"{run_dir.name} and {first[2].name}: the seeds of fold {fold} were evaluated on different "
                        "cases; re-run them with the same datalist."
                    )
                stacked.append(seed_stats[:, [seed_cases.index(c) for c in cases]])
            comparison.folds[fold] = (np.stack(stacked, axis=1), sorted(seeds), cases)  # (2, S, K, C, 7)
    return out


@dataclass
class _Estimate:
    diff: float
    se: float
    var_seed: float
    var_case: float
    var_interaction: float
    fold_sd: float
    seed_df: int
    case_df: int
    interaction_df: int
    nan_share: float

    @property
    def parts(self) -> list[tuple[float, float]]:
        """The variance of the difference as seed, case and seed x case components with their degrees of freedom."""
        return [
            (self.var_seed, self.seed_df),
            (self.var_case, self.case_df),
            (self.var_interaction, self.interaction_df),
        ]


def _draws(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """``(b, n)`` multinomial counts of ``n - 1`` draws with replacement from ``n`` (all ones when ``n < 2``)."""
    if n < 2:
        return np.ones((b, n))
    return rng.multinomial(n - 1, np.full(n, 1.0 / n), size=b).astype(np.float64)


def _estimate(comparisons: Sequence[Comparison], metric: str, organ: str, n_boot: int, seed: int) -> list[_Estimate]:
    """Difference and variance components of each comparison; the draws are shared by all comparisons of a fold."""
    rng = np.random.default_rng(seed)
    draws: dict[tuple[int, str, int], np.ndarray] = {}  # shared by the comparisons of a fold: the same cases

    def drawn(fold: int, level: str, n: int) -> np.ndarray:
        if (fold, level, n) not in draws:
            draws[(fold, level, n)] = _draws(rng, n, n_boot)
        return draws[(fold, level, n)]

    out = []
    for comp in comparisons:
        total_runs = comp.runs
        diff, seed_only, case_only, both = 0.0, np.zeros(n_boot), np.zeros(n_boot), np.zeros(n_boot)
        fold_diffs, seed_df, case_df, inter_df = [], 0, 0, 0
        for f, (stats, seeds, cases) in sorted(comp.folds.items()):
            weight = len(seeds) / total_runs
            seed_w, case_w = drawn(f, "seed", len(seeds)), drawn(f, "case", len(cases))
            m = metric_values(stats.sum(2), metric, organ)  # (2, S): per seed, all cases
            per_seed = m[0] - m[1]
            boot = metric_values(np.einsum("bk,mskcq->bmscq", case_w, stats), metric, organ)  # (B, 2, S)
            boot_per_seed = boot[:, 0] - boot[:, 1]
            d_f = float(per_seed.mean())
            fold_diffs.append(d_f)
            diff += weight * d_f
            seed_only += weight * (seed_w @ per_seed) / seed_w.sum(1)
            case_only += weight * boot_per_seed.mean(1)
            both += weight * (seed_w * boot_per_seed).sum(1) / seed_w.sum(1)
            seed_df, case_df = seed_df + len(seeds) - 1, case_df + len(cases) - 1
            inter_df += (len(seeds) - 1) * (len(cases) - 1)
        nan_share = float(np.isnan(both).mean())
        v_seed, v_case, v_both = (
            float(np.nanvar(x, ddof=1)) if n_boot > 1 else 0.0 for x in (seed_only, case_only, both)
        )
        interaction = max(v_both - v_seed - v_case, 0.0) if seed_df > 0 and case_df > 0 else 0.0
        var_seed, var_case = max(v_seed - interaction, 0.0), max(v_case - interaction, 0.0)
        var = var_seed + var_case + interaction
        fold_sd = float(np.std(fold_diffs, ddof=1)) if len(fold_diffs) > 1 else math.nan
        out.append(
            _Estimate(
                diff, math.sqrt(var), var_seed, var_case, interaction, fold_sd, seed_df, case_df, inter_df, nan_share
            )
        )
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): family-wise error control without independence assumptions.

    Args:
        pvalues: one p-value per hypothesis of a family.

    Returns:
        the adjusted p-values, in the input order, each at most 1 and never below the one of a smaller raw p.
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _half_width(parts: Sequence[tuple[float, float]], tail: float) -> float:
    """Half-width ``sqrt(sum_i t(df_i, 1 - tail)^2 v_i)`` of a variance that is a sum of components ``v_i``.

    Each component ``v_i`` carries its own degrees of freedom ``df_i``, as in Banerjee's (1961) interval for a sum
    of variances. With a single Satterthwaite df the interval undercovers when the component with few df (the
    seeds) dominates and is estimated low by chance (simulated: 89 % at three seeds for a nominal 95 %, against
    92 to 93 % with this interval; see docs/measured/verdict_simulation.md).
    """
    from scipy.stats import t

    parts = [(v, d) for v, d in parts if v != 0 and d > 0]
    if not parts:
        return 0.0
    variances = np.array([v for v, _ in parts])
    quantiles = t.ppf(1 - tail, np.array([d for _, d in parts], dtype=np.float64))
    return float(np.sqrt(max((quantiles**2 * variances).sum(), 0.0)))


def _p_value(x: float, parts: Sequence[tuple[float, float]]) -> float:
    """One-sided p-value of a distance ``x`` between the estimate and a hypothesis' bound, consistent with
    :func:`_half_width`: the tail at which the half-width equals ``x`` (above 0.5 when ``x`` is negative)."""
    from scipy.optimize import brentq

    if x == 0:
        return 0.5
    a = abs(x)
    if _half_width(parts, 1e-15) <= a:
        tail = 1e-15
    else:
        tail = brentq(lambda q: _half_width(parts, q) - a, 1e-15, 0.5, xtol=1e-12)
    return tail if x > 0 else 1 - tail


def plan_seeds(
    est: _Estimate, seeds: int, folds: int, margin: float, alpha: float, planned_folds: int = 0
) -> int | None:
    """Seeds per fold at which the interval's half-width ``t(df) se`` falls below ``margin / 2``.

    The seed and seed x case components shrink as ``seeds / n``; the case component does not (the same cases are
    evaluated whatever the seeds). With ``planned_folds`` above the study's ``folds``, the cases and runs grow by
    that factor and every component shrinks by it (the folds are assumed alike).

    Args:
        est: the estimate of a pilot study.
        seeds: the pilot's seeds per fold.
        folds: the pilot's folds.
        margin: the margin δ.
        alpha: two-sided level.
        planned_folds: folds of the planned study (0: the pilot's).

    Returns:
        the number of seeds (at least 2); ``None`` when the pilot has one seed (the training noise is unknown), or
        when the case component alone keeps the half-width at or above ``margin / 2`` (more cases are needed, not
        more seeds).
    """
    if est.seed_df == 0 or est.case_df == 0 or est.se == 0:
        return None
    planned = max(planned_folds, folds)
    shrink = folds / planned
    case_var, case_df = est.var_case * shrink, round(est.case_df / shrink)
    if _half_width([(case_var, case_df)], alpha / 2) >= margin / 2:
        return None
    for n in range(2, 10_001):
        scale = seeds / n * shrink
        parts = [(est.var_seed * scale, planned * (n - 1)), (case_var, case_df),
                 (est.var_interaction * scale, planned * (n - 1) * max(case_df / planned, 1))]  # fmt: skip
        if _half_width(parts, alpha / 2) < margin / 2:
            return n
    return None


def _word(p: dict[str, float], level: float) -> str:
    if p["inferior"] < level:
        return "inferior"
    if p["equivalent"] < level:
        return "equivalent"
    if p["superior"] < level:
        return "superior"
    if p["non-inferior"] < level:
        return "non-inferior"
    return "inconclusive"


def compare(
    comparisons: Sequence[Comparison],
    metric: str = "jaccard",
    organ: str = POOLED,
    margin: float = 0.01,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    all_folds: int | None = None,
) -> list[dict[str, Any]]:
    """Verdict rows of one metric and organ for a family of comparisons (Holm across them).

    Args:
        comparisons: from :func:`load_comparisons` (or built directly, e.g. by a simulation).
        metric: one of :data:`METRICS`.
        organ: :data:`POOLED` or an organ of ``kvmonai.data.CLASSES``.
        margin: the non-inferiority/equivalence margin δ (> 0), in the metric's units.
        alpha: two-sided level of the interval (0 < alpha < 1).
        n_boot: bootstrap replicates.
        seed: seed of the bootstrap draws (the verdict is reproducible).
        all_folds: folds of the whole datalist, for the plan at all folds (``None``: the study's folds).

    Returns:
        one dict per comparison with the columns of ``verdict.csv``.

    Raises:
        VerdictError: on a margin <= 0, an alpha outside (0, 1), too few replicates or an unknown metric/organ.
    """
    if not margin > 0:
        raise VerdictError(f"--margin must be > 0, got {margin}.")
    if not 0 < alpha < 1:
        raise VerdictError(f"--alpha must be between 0 and 1, got {alpha}.")
    if n_boot < 200:
        raise VerdictError(f"--bootstrap must be at least 200 replicates, got {n_boot}.")
    metric_values(np.zeros((1, len(CLASSES), len(STATS))), metric, organ)  # validates metric and organ
    usable = [c for c in comparisons if c.reason is None and c.folds]
    estimates = dict(zip(map(id, usable), _estimate(usable, metric, organ, n_boot, seed), strict=True))
    rows, pvalues = [], {}
    for comp in comparisons:
        row: dict[str, Any] = {"pair": comp.pair, "twin": comp.twin, "metric": metric, "organ": organ,
                               "margin": margin, "seeds": comp.seeds, "cases": comp.cases, "folds": len(comp.folds),
                               "runs": comp.runs, "reason": comp.reason or ""}  # fmt: skip
        rows.append(row)
        est = estimates.get(id(comp))
        if est is None:
            continue
        half = _half_width(est.parts, alpha / 2)
        row.update(diff=est.diff, lo=est.diff - half, hi=est.diff + half, se=est.se,
                   var_seed=est.var_seed, var_case=est.var_case, var_interaction=est.var_interaction,
                   fold_sd=est.fold_sd)  # fmt: skip
        row["seeds_needed"] = plan_seeds(est, comp.seeds, len(comp.folds), margin, alpha)
        row["seeds_needed_all_folds"] = plan_seeds(est, comp.seeds, len(comp.folds), margin, alpha, all_folds or 0)
        if math.isnan(est.diff) or est.nan_share > 0.05:
            row["reason"] = f"{organ} is absent from too many of the validation cases for a {metric} difference"
        elif est.seed_df == 0:
            row["reason"] = (
                "one seed per fold: the training noise (seed-to-seed variance) cannot be estimated, so the interval "
                "covers the case sampling only; run at least 2 seeds (see the plan)"
            )
        elif est.case_df == 0:
            row["reason"] = "one validation case per fold: the case variance cannot be estimated"
        elif est.se == 0:
            row["reason"] = "the difference does not vary over seeds and cases: no interval"
        if row["reason"]:
            continue
        p_ni, p_hi = _p_value(est.diff + margin, est.parts), _p_value(margin - est.diff, est.parts)
        p_sup = _p_value(est.diff - margin, est.parts)
        pvalues[id(comp)] = {
            "inferior": 1 - p_ni,
            "non-inferior": p_ni,
            "superior": p_sup,
            "equivalent": max(p_ni, p_hi),
        }
    tested = [i for i, c in enumerate(comparisons) if id(c) in pvalues]
    adjusted: dict[int, dict[str, float]] = {i: {} for i in tested}
    for kind in ("inferior", "non-inferior", "superior", "equivalent"):
        for i, p in zip(tested, holm([pvalues[id(comparisons[i])][kind] for i in tested]), strict=True):
            adjusted[i][kind] = p
    for i, row in enumerate(rows):
        if i in adjusted:
            row["verdict"], row["p_adjusted"] = _word(adjusted[i], alpha / 2), adjusted[i]["non-inferior"]
        else:
            row["verdict"], row["p_adjusted"] = "inconclusive", None
    return rows


def study_verdict(
    study: str | Path,
    margin: float = 0.01,
    alpha: float = 0.05,
    metrics: Iterable[str] = METRICS,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every verdict row of a finished study: each compared pair x metric x organ (pooled first).

    Raises:
        VerdictError: see :func:`load_comparisons` and :func:`compare`.
    """
    comparisons = load_comparisons(study)
    if not comparisons:
        raise VerdictError(
            f"{study}: no variant run with a QKV twin to compare (the study ran only QKV or references)."
        )
    all_folds = _datalist_folds(Path(study))
    rows = []
    for metric in metrics:
        organs = [POOLED] + ([] if metric == "weighted_jaccard" else list(CLASSES))
        for organ in organs:
            rows += compare(comparisons, metric, organ, margin, alpha, n_boot, seed, all_folds)
    return rows


def _datalist_folds(study: Path) -> int | None:
    """Number of folds of the study's datalist (its path is in the first run's fingerprint), if it can be read."""
    for fingerprint in sorted((study / "runs").glob("*/run_settings.json"))[:1]:
        try:
            datalist = json.loads(fingerprint.read_text()).get("datalist")
            items = json.loads(Path(datalist).read_text())["training"]
            return len({i["fold"] for i in items if "fold" in i}) or None
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def _fmt(x: Any, digits: int = 3, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def verdict_markdown(rows: Sequence[dict[str, Any]], metric: str = "jaccard", organ: str = POOLED) -> str:
    """The verdict table of one metric and organ: pair, Δ [95 % CI], verdict, adjusted p, runs, cases, plan."""
    head = ["pair", "vs", f"Δ {metric} [CI]", "verdict", "p adj.", "runs", "cases", "seeds needed", "reason"]
    table = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != organ:
            continue
        ci = f"{_fmt(r.get('diff'))} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}]" if r.get("diff") is not None else "n/a"
        p = r.get("p_adjusted")
        need = r.get("seeds_needed")
        table.append([r["pair"], r["twin"], ci, f"**{r['verdict']}**", "n/a" if p is None else f"{p:.3g}",
                      r["runs"], r["cases"], "n/a" if need is None else need, r.get("reason", "")])  # fmt: skip
    return markdown_table(head, table, ["left", "left", "right", "left", "right", "right", "right", "right", "left"])


def write_verdict(study: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``verdict.csv`` (one row per compared pair, metric and organ) atomically; returns its path."""
    out = [{k: r.get(k) for k in _CSV_FIELDS} for r in rows]
    return write_text_atomic(Path(study) / "verdict.csv", csv_text(out, _CSV_FIELDS))


def verdict_lines(rows: Sequence[dict[str, Any]], metric: str = "jaccard") -> list[str]:
    """One line per compared pair for a terminal: the pooled verdict, its interval and the per-organ words."""
    lines = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != POOLED:
            continue
        organs = [o for o in rows if o["metric"] == metric and o["pair"] == r["pair"] and o["organ"] != POOLED]
        words = ", ".join(f"{o['organ']} {o['verdict']}" for o in organs)
        ci = f"Δ {_fmt(r.get('diff'))} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}]" if r.get("diff") is not None else ""
        lines.append(f"{r['pair']} vs {r['twin']}: {r['verdict']} {ci} ({words})".replace("  ", " "))
    return lines


def plan_markdown(rows: Sequence[dict[str, Any]], metric: str = "jaccard") -> str:
    """The ``--plan`` answer: per pair, the parts of the difference's standard error and the seeds per fold needed
    for a half-width below δ/2, at the study's folds and at all folds of its datalist."""
    head = ["pair", "se from seeds", "se from cases", "se from seed x case", "sd over folds",
            "seeds needed (these folds)", "seeds needed (all folds)"]  # fmt: skip
    table = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != POOLED or r.get("se") is None:
            continue

        sd = [_fmt(math.sqrt(r[k]) if r.get(k) is not None else None, 4, sign=False)
              for k in ("var_seed", "var_case", "var_interaction")]  # fmt: skip
        need = [
            str(r[k]) if r.get(k) is not None
            else "unknown (pilot has 1 seed)" if r["seeds"] < 2
            else "none suffices: the cases limit the width"
            for k in ("seeds_needed", "seeds_needed_all_folds")
        ]  # fmt: skip
        table.append([r["pair"], *sd, _fmt(r.get("fold_sd"), 4, sign=False), *need])
    return markdown_table(head, table, ["left"] + ["right"] * 6)


def read_verdict(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``verdict.csv`` with numbers as numbers (empty cells as ``None``)."""
    text = {"pair", "twin", "metric", "organ", "verdict", "reason"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: v if k in text else (None if v == "" else float(v)) for k, v in r.items()})
    for r in rows:
        for k in ("seeds", "cases", "folds", "runs", "seeds_needed", "seeds_needed_all_folds"):
            r[k] = None if r[k] is None else int(r[k])
    return rows
