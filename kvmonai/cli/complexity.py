"""``kvmonai complexity``: print the parameter/MAC table of every architecture/attention pair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai complexity``."""
    from kvmonai.networks import EXTRA_ARCHITECTURES, PRESETS, STUDY_ARCHITECTURES

    parser.add_argument("--preset", default="paper", choices=PRESETS, help="network sizes (default: paper)")
    parser.add_argument("--format", default="md", choices=("md", "csv"), help="output format (default: md)")
    parser.add_argument("--archs", nargs="+", choices=STUDY_ARCHITECTURES + EXTRA_ARCHITECTURES,
                        help="architectures (default: the five of the study; the timm backbones crossvit, swin and "
                        "nextvit by name)")  # fmt: skip
    parser.add_argument("--img-size", type=int, help="square input side (default: 224 paper, 128 small, 64 tiny)")
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default: 3)")
    parser.add_argument("--out-channels", type=int, default=3, help="output classes (default: 3)")
    parser.add_argument("--out", type=Path, help="also write the table to this file (atomically)")


def run(args: argparse.Namespace) -> int:
    """Compute and print the table."""
    from kvmonai.complexity import complexity_table, format_table
    from kvmonai.utils import write_text_atomic

    rows = complexity_table(args.preset, args.archs, args.img_size, args.in_channels, args.out_channels)
    text = format_table(rows, args.format)
    sys.stdout.write(text)
    if args.out is not None:
        write_text_atomic(args.out, text)
    return 0
