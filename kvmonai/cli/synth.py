"""``kvmonai synth``: write a synthetic UW-Madison GI Tract dataset in the Kaggle layout."""

from __future__ import annotations

import argparse
import logging
import sys
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``parser``.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--out", required=True, help="output folder (gets train.csv, train/, sample_submission.csv)")
    parser.add_argument("--cases", type=int, default=3, help="number of cases; 85 gives the real 274 scans (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical files (default 0)")
    parser.add_argument("--days", type=int, default=None, help="days per case (default: the real mix of 1-6)")
    parser.add_argument(
        "--slices", type=int, default=None, help="slices per scan (default: 144, or 80 for 276x276 scans)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="image size factor, e.g. 0.25 for fast tests (default 1: real sizes)"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--compress-level", type=int, default=1, help="PNG zlib level 0-9 (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the dataset.

    Args:
        args: the parsed options.

    Returns:
        0 on success, 2 when the options or the output folder are unusable.
    """
    from kvmonai.data import write_synthetic_dataset

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        summary = write_synthetic_dataset(
            args.out,
            cases=args.cases,
            seed=args.seed,
            days=args.days,
            slices=args.slices,
            scale=args.scale,
            workers=args.workers,
            compress_level=args.compress_level,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError) as e:
        print(f"kvmonai synth: error: {e}", file=sys.stderr)
        return 2
    print(
        f"synthetic dataset: {summary.cases} cases, {summary.scans} scans, {summary.slices} slices "
        f"({100 * summary.nonempty_slices / summary.slices:.1f} % with an organ) in {summary.root} "
        f"[{time.perf_counter() - start:.1f} s]"
    )
    return 0
