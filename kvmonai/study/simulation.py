"""Error rates of the verdict on simulated studies with a known difference.

A simulated study is nested like a real one: folds of cases, each case scanned on several days, every seed's
network evaluated on every case-day of its fold. Per case-day and organ the union of prediction and truth is
``U`` pixels and the Jaccard ``j``; the QKV twin's ``j`` is ``base + h_case + e`` and the variant's
``base + h_case + Δ + a_seed + b_case + e'``, with ``h_case`` a difficulty shared by both twins (what pairing must
cancel), ``a_seed`` the training noise of the difference, ``b_case`` a case-level difference, and ``e, e'``
independent per-volume noise (the seed x case interaction). Since the pooled Jaccard is the ``U``-weighted mean of
``j``, the true difference of the pooled metric is exactly ``Δ``.

Run ``python -m kvmonai.study.simulation`` for the table in ``docs/measured/verdict_simulation.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvmonai.data import CLASSES
from kvmonai.study.pairing import STATS, Comparison
from kvmonai.study.verdict import compare
from kvmonai.utils import markdown_table

__all__ = ["Scenario", "error_rates", "simulate_comparison"]


@dataclass(frozen=True)
class Scenario:
    """One simulated study design and its effects (Jaccard units).

    Args:
        diff: the true difference Δ of the variant's pooled Jaccard to its twin's.
        seeds: seeds per fold.
        cases: cases per fold.
        folds: folds (strata).
        days: scanned days per case.
        seed_sd: sd of the difference's training noise, per seed.
        case_sd: sd of the difference's case effect, per case.
        noise_sd: sd of each network's per-volume noise (the seed x case interaction).
        shared_sd: sd of a case difficulty shared by both twins.
    """

    diff: float = 0.0
    seeds: int = 5
    cases: int = 20
    folds: int = 1
    days: int = 2
    seed_sd: float = 0.004
    case_sd: float = 0.01
    noise_sd: float = 0.03
    shared_sd: float = 0.08


def simulate_comparison(s: Scenario, rng: np.random.Generator, name: str = "sim_kv") -> Comparison:
    """One simulated variant/twin comparison with the statistics ``load_comparisons`` would read."""
    c = len(CLASSES)
    comparison = Comparison(name, "sim_qkv")
    for fold in range(s.folds):
        union = rng.uniform(2000, 8000, size=(s.cases, s.days, c))
        shared = rng.normal(0, s.shared_sd, size=(s.cases, 1, 1))
        base = 0.6 + shared
        effect = s.diff + rng.normal(0, s.seed_sd, size=(s.seeds, 1, 1, 1))
        effect = effect + rng.normal(0, s.case_sd, size=(1, s.cases, 1, 1))
        j_twin = base + rng.normal(0, s.noise_sd, size=(s.seeds, s.cases, s.days, c))
        j_pair = base + effect + rng.normal(0, s.noise_sd, size=(s.seeds, s.cases, s.days, c))
        stats = np.zeros((2, s.seeds, s.cases, c, len(STATS)))
        for m, j in enumerate((j_pair, j_twin)):
            tp = union * j
            stats[m, ..., 0] = tp.sum(2)
            stats[m, ..., 1] = stats[m, ..., 2] = ((union - tp) / 2).sum(2)
            stats[m, ..., 3], stats[m, ..., 4] = (2 * j / (1 + j)).sum(2), s.days  # Dice of each volume
            stats[m, ..., 6] = s.days  # no distance term: hd_sum stays 0
        comparison.folds[fold] = (stats, list(range(s.seeds)), [f"case{fold}_{k}" for k in range(s.cases)])
    return comparison


def error_rates(
    s: Scenario, sims: int = 400, margin: float = 0.01, alpha: float = 0.05, n_boot: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Share of simulated studies by verdict, the interval's coverage of Δ and its mean width.

    Returns:
        ``{"sims", "coverage", "width", "non-inferior", <each verdict>: share}``; ``non-inferior`` counts every word
        that implies it (non-inferior, equivalent, superior).
    """
    rng = np.random.default_rng(seed)
    words: dict[str, int] = {}
    covered, widths = 0, []
    for i in range(sims):
        row = compare([simulate_comparison(s, rng)], "jaccard", margin=margin, alpha=alpha, n_boot=n_boot, seed=i)[0]
        words[row["verdict"]] = words.get(row["verdict"], 0) + 1
        covered += row["lo"] <= s.diff <= row["hi"]
        widths.append(row["hi"] - row["lo"])
    out: dict[str, Any] = {"sims": sims, "coverage": covered / sims, "width": float(np.mean(widths))}
    out.update(
        {w: words.get(w, 0) / sims for w in ("inferior", "equivalent", "superior", "non-inferior", "inconclusive")}
    )
    out["claims non-inferiority"] = sum(words.get(w, 0) for w in ("non-inferior", "equivalent", "superior")) / sims
    return out


#: the scenarios of the documented table: (label, scenario)
SCENARIOS: tuple[tuple[str, Scenario], ...] = (
    ("Δ = -δ, 5 seeds x 20 cases", Scenario(diff=-0.01)),
    ("Δ = -δ, 3 seeds x 15 cases", Scenario(diff=-0.01, seeds=3, cases=15)),
    ("Δ = 0, 5 seeds x 20 cases", Scenario(diff=0.0)),
    ("Δ = 0, 10 seeds x 2 folds x 20 cases", Scenario(diff=0.0, seeds=10, folds=2)),
    ("Δ = 0, 3 seeds x 15 cases", Scenario(diff=0.0, seeds=3, cases=15)),
    ("Δ = 0, 5 x 20, no shared case effect", Scenario(diff=0.0, shared_sd=0.0)),
    ("Δ = 0, 3 seeds x 20 cases, seed noise dominant", Scenario(seeds=3, seed_sd=0.01, case_sd=0.002)),
    ("Δ = -δ, 3 seeds x 20 cases, seed noise dominant", Scenario(diff=-0.01, seeds=3, seed_sd=0.01, case_sd=0.002)),
)


def main(argv: list[str] | None = None) -> int:
    """Print the error-rate table as markdown."""
    parser = argparse.ArgumentParser(prog="python -m kvmonai.study.simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=1000, help="simulated studies per scenario (default: 1000)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap replicates per verdict (default: 500)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for label, scenario in SCENARIOS:
        r = error_rates(scenario, sims=args.sims, n_boot=args.bootstrap)
        se = math.sqrt(r["coverage"] * (1 - r["coverage"]) / r["sims"])
        rows.append([label, f"{r['claims non-inferiority']:.3f}", f"{r['coverage']:.3f} ± {se:.3f}",
                     f"{r['width']:.4f}", f"{r['equivalent']:.3f}", f"{r['inconclusive']:.3f}"])  # fmt: skip
    head = ["scenario (δ = 0.01, α = 0.05)", "non-inferior or better", "coverage of Δ", "mean CI width",
            "equivalent", "inconclusive"]  # fmt: skip
    print(markdown_table(head, rows, ["left"] + ["right"] * 5))
    print(f"\n{args.sims} simulated studies per row, {args.bootstrap} bootstrap replicates each; "
          f"{time.perf_counter() - start:.0f} s.")  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
