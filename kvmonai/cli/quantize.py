"""``kvmonai quantize BUNDLE --datalist D``: int8 post-training quantisation of a bundle (NNCF + OpenVINO)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kvmonai.utils import add_override_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai quantize``."""
    parser.add_argument("bundle", type=Path, help="the bundle folder (e.g. bundles/setr_kv) with models/model.pt")
    parser.add_argument("--datalist", type=Path, required=True, help="datalist JSON written by kvmonai prepare")
    parser.add_argument("--subset", type=int, default=128, help="calibration slices from the training split (128)")
    parser.add_argument(
        "--max-drop", type=float, default=0.01, help="refuse when the pooled Dice drops by more than this (0.01)"
    )
    parser.add_argument("--fold", type=int, help="validation fold (default: the bundle's train.json fold)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration slice choice (0)")
    add_override_argument(
        parser,
        "inference.json override, repeatable (e.g. --set preset=tiny --set img_size=64 --set weights=W.pt)",
    )
    parser.add_argument("--quiet", action="store_true", help="only errors")


def run(args: argparse.Namespace) -> int:
    """Quantise, evaluate and keep or refuse.

    Returns:
        0 when the int8 model was written, 1 when it was refused for accuracy, 2 for invalid input.
    """
    from kvmonai.quantize import QuantizationRefusedError, quantize_bundle

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    options = {k: getattr(args, k) for k in ("subset", "max_drop", "fold", "seed")}
    try:
        report = quantize_bundle(args.bundle, args.datalist, overrides=dict(args.overrides), **options)
    except QuantizationRefusedError as e:
        print(f"kvmonai quantize: refused: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"kvmonai quantize: error: {e}", file=sys.stderr)
        return 2
    drop = f"drop {report.dice_drop:+.4f} <= {report.max_drop}"
    print(f"wrote {args.bundle / 'models' / 'model_int8.xml'}: pooled Dice fp32 {report.dice_fp32:.4f}, int8 "
          f"{report.dice_int8:.4f} ({drop}); {100 * report.voxels_differing:.2f} % of voxels differ. "
          "Run it with --runtime openvino --precision int8.")  # fmt: skip
    return 0
