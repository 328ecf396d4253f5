"""``kvmonai export BUNDLE --weights W --out DIR``: a self-contained inference bundle that runs with MONAI alone.

``BUNDLE`` is a bundle folder (``bundles/setr_kv``) or a bundle's name in the bundles folder (``setr_kv``:
``$KVMONAI_BUNDLES``, else the repository's ``bundles/``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kvmonai.utils import add_override_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai export``."""
    parser.add_argument(
        "bundle", help="the kvmonai bundle: a folder (e.g. bundles/setr_kv) or a name in the bundles folder (setr_kv)"
    )
    parser.add_argument("--weights", type=Path, required=True, help="trained weights (the bundle's models/model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the exported bundle's folder (new, or empty)")
    add_override_argument(
        parser,
        "inference.json value the weights were trained with, repeatable (e.g. --set preset=tiny "
        "--set img_size=64); written into the exported config",
    )
    parser.add_argument(
        "--weights-url", help="where models/model.pt2 will be published: writes large_files.yml (path, url, sha256)"
    )
    parser.add_argument("--quiet", action="store_true", help="only errors")


def run(args: argparse.Namespace) -> int:
    """Export and report.

    Returns:
        0 when the bundle was written, 2 for invalid input (nothing written).
    """
    from kvmonai.export import ExportError, export_bundle
    from kvmonai.paths import find_bundle

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        summary = export_bundle(
            find_bundle(args.bundle),
            args.weights,
            args.out,
            overrides=dict(args.overrides),
            weights_url=args.weights_url,
        )
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"kvmonai export: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {summary.out} ({summary.parameters:,} parameters; {summary.program.name} sha256 "
              f"{summary.program_sha256[:16]}...). Run it with MONAI alone:\n"
              f"  cd {summary.out} && python -m monai.bundle run --config_file configs/inference.json "
              "--meta_file configs/metadata.json --bundle_root . --input_path <DICOM folder or NIfTI> "
              "--output_dir predictions")  # fmt: skip
    return 0
