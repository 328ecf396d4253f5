"""A study's runs paired for the verdict: each variant's per-case results joined with its QKV twin's.

A variant's run is paired with its QKV twin of the same architecture, fold and seed, and the two are compared on the
same validation cases (``eval/per_case.csv`` of both runs, joined by case-day). Every summary metric of a run
(Jaccard and weighted Jaccard with pixels pooled over the volumes, the competition score) is a function of per-volume
sums, which ``EvaluationReport`` writes per case-day (true/false positives, false negatives, Dice sums, Hausdorff
distances), so any resample of the cases gives the metric exactly (:func:`metric_values`), not an approximation.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvmonai.data import CLASSES
from kvmonai.paths import bundle_name

__all__ = [
    "METRICS",
    "POOLED",
    "STATS",
    "Comparison",
    "VerdictError",
    "load_comparisons",
    "metric_values",
    "read_per_case",
]

#: metrics a verdict can be given on (all on a 0-1 scale, higher is better)
METRICS: tuple[str, ...] = ("jaccard", "weighted_jaccard", "score")
#: the organ column's value for the pooled (all organs) comparison
POOLED = "all"
#: per volume and class, the sums every metric is computed from (the last axis of the statistics arrays)
STATS: tuple[str, ...] = ("tp", "fp", "fn", "dice_sum", "dice_rows", "hd_sum", "hd_n")


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
        comparison.folds = _paired_folds(study, mine, twins, check_summary)
    return out


def _run_stats(study: Path, run: dict[str, Any], check_summary: bool) -> tuple[list[str], np.ndarray, set[str], Path]:
    """One run's per-case statistics, its case-days and folder; its Jaccard checked against ``runs.csv``."""
    run_dir = study / "runs" / Path(run["run_dir"]).name
    cases, stats, volumes = read_per_case(run_dir / "eval" / "per_case.csv")
    if check_summary and run.get("jaccard"):
        recomputed = float(metric_values(stats.sum(0), "jaccard"))
        if abs(recomputed - float(run["jaccard"])) > 1e-5:
            raise VerdictError(
                f"{run_dir}: Jaccard from eval/per_case.csv ({recomputed:.6f}) differs from runs.csv "
                f"({float(run['jaccard']):.6f}); the run folder was changed after the report was written."
            )
    return cases, stats, set(volumes), run_dir


def _paired_folds(
    study: Path, mine: dict[tuple[int, int], dict], twins: dict[tuple[int, int], dict], check_summary: bool
) -> dict[int, tuple[np.ndarray, list[int], list[str]]]:
    """Per fold, the statistics ``(2, S, K, C, 7)`` of the variant and its twin, cases in one order for all seeds.

    Raises:
        VerdictError: when twins, or the seeds of a fold, were evaluated on different case-days.
    """
    folds: dict[int, dict[int, tuple[np.ndarray, list[str], Path]]] = {}
    for (fold, seed), run in sorted(mine.items()):
        cases, stats, vols, run_dir = _run_stats(study, run, check_summary)
        twin_cases, twin_stats, twin_vols, twin_dir = _run_stats(study, twins[(fold, seed)], check_summary)
        if vols != twin_vols:
            raise VerdictError(
                f"{run_dir.name} and {twin_dir.name} were evaluated on different case-days (e.g. "
                f"{sorted(vols ^ twin_vols)[0]}); re-run both with the same datalist."
            )
        order = [twin_cases.index(c) for c in cases]
        folds.setdefault(fold, {})[seed] = (np.stack([stats, twin_stats[order]]), cases, run_dir)
    out = {}
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
        out[fold] = (np.stack(stacked, axis=1), sorted(seeds), cases)
    return out
