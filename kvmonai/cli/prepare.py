"""``kvmonai prepare``: Kaggle-layout folder -> NIfTI volumes per case-day + MONAI datalist with 5 folds."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` options to ``parser``.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--src", required=True, help="dataset root holding train.csv and train/ (only read)")
    parser.add_argument("--out", required=True, help="output folder (imagesTr/, labelsTr/, datalist.json)")
    parser.add_argument("--csv", default=None, help="label csv (default SRC/train.csv)")
    parser.add_argument("--folds", type=int, default=5, help="number of case-grouped folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--compress-level", type=int, default=1, help="gzip level 1-9 of the volumes (default 1)")
    parser.add_argument("--datalist", default="datalist.json", help="datalist file name in OUT (default datalist.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset.

    Args:
        args: the parsed options.

    Returns:
        0 on success, 2 on invalid input (nothing half-written is left behind), 130 when interrupted.
    """
    from kvmonai.data import prepare_dataset

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _terminate)  # clean up the partial file on kill, as on Ctrl-C
    start = time.perf_counter()
    try:
        summary = prepare_dataset(
            args.src,
            args.out,
            num_folds=args.folds,
            seed=args.seed,
            compresslevel=args.compress_level,
            csv_path=args.csv,
            datalist_name=args.datalist,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"kvmonai prepare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvmonai prepare: interrupted; finished volumes are kept, run again to continue.", file=sys.stderr)
        return 130
    print(
        f"prepared {summary.scans} case-day volumes ({summary.written} files written, {summary.skipped} up to date), "
        f"{summary.slices} slices, {100 * summary.nonempty_slices / max(summary.slices, 1):.1f} % with an organ; "
        f"datalist {summary.datalist} [{time.perf_counter() - start:.1f} s]"
    )
    return 0
