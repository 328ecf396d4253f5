"""``kvmonai bundles [--check]``: write the MONAI bundles from the template in ``kvmonai/bundle/template``.

The bundles are the 14 pairs of the five transformers, the CNN reference (``unet_cnn``) and the pairs of the timm
backbones (crossvit, swin, nextvit), written to the bundles folder (``$KVMONAI_BUNDLES``, else the repository's
``bundles/``). ``--check`` only reports differences: one line per stale file, exit status 1.

Each bundle's README quotes the measured tables in ``docs/measured``: ``complexity_paper.csv`` (``kvmonai complexity
--preset paper --format csv --out docs/measured/complexity_paper.csv``), ``complexity_paper_timm.csv`` (the same with
``--archs crossvit swin nextvit``) and ``study_synthetic_small.csv`` (results.csv of the ``./scripts/demo.sh`` study).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai bundles``."""
    parser.add_argument(
        "--check", action="store_true", help="only report the files that differ from the template (exit status 1)"
    )


def _shown(path: Path, repo: Path) -> str:
    """``path`` relative to the repository when it lies inside it (``bundles/setr_kv``), else as it is."""
    resolved = path.resolve()
    return str(resolved.relative_to(repo)) if resolved.is_relative_to(repo) else str(path)


def run(args: argparse.Namespace) -> int:
    """Write (or check) every bundle.

    Returns:
        0, or 1 when ``--check`` found a bundle that differs from what the generator makes.
    """
    from kvmonai.bundle import check_bundles, write_bundles
    from kvmonai.cli import _repo
    from kvmonai.paths import bundles_dir

    repo, bundles = _repo(), bundles_dir()
    measured = repo / "docs" / "measured"
    if args.check:
        problems = check_bundles(bundles, measured)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    for folder in write_bundles(bundles, measured_dir=measured):
        print(_shown(folder, repo))
    return 0
