"""``kvmonai verdict``: is each attention variant as good as its QKV twin? Recomputed from a finished study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai verdict``."""
    from kvmonai.study import METRICS

    parser.add_argument("study", type=Path, help="a finished study folder (results/<name>)")
    parser.add_argument("--margin", type=float, default=0.01,
                        help="non-inferiority/equivalence margin δ in the metric's units (default: 0.01)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - the interval's level (default: 0.05)")
    parser.add_argument(
        "--metric", choices=METRICS, default="jaccard", help="metric of the table and plot (default: jaccard)"
    )
    parser.add_argument("--plan", action="store_true",
                        help="also print how many seeds a conclusive study needs, this study as pilot")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default: 2000)")


def run(args: argparse.Namespace) -> int:
    """Print the verdict table (and the plan), write ``verdict.csv`` and the forest plot into the study folder."""
    from kvmonai.study import (
        VerdictError,
        plan_markdown,
        plot_forest,
        study_verdict,
        verdict_lines,
        verdict_markdown,
        write_verdict,
    )

    try:
        rows = study_verdict(args.study, margin=args.margin, alpha=args.alpha, n_boot=args.bootstrap)
    except VerdictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    csv_path = write_verdict(args.study, rows)
    plot = plot_forest(rows, args.metric, args.study / f"verdict_{args.metric}.png")
    level = round(100 * (1 - args.alpha), 1)
    print(f"{args.metric}, margin δ = {args.margin:g}, {level:g} % intervals, Holm across the pairs:\n")
    print(verdict_markdown(rows, args.metric))
    print()
    for line in verdict_lines(rows, args.metric):
        print(line)
    if args.plan:
        print(f"\nplan: seeds per fold for a {level:g} % half-width below δ/2 = {args.margin / 2:g}\n")
        print(plan_markdown(rows, args.metric))
    print(f"\n{csv_path}\n{plot}")
    return 0
