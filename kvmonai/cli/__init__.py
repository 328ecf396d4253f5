"""The ``kvmonai`` command line.

Every subcommand ``kvmonai <command>`` lives in its own module ``kvmonai/cli/<command>.py``: a thin layer of argparse
that calls into the package doing the work. It is imported only when it is run, so ``kvmonai --help`` stays fast
(no torch or MONAI import). A command module provides two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

and is listed once in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLES_ENV", "COMMANDS", "main"]

#: name -> one-line help; the command lives in the module ``kvmonai.cli.<name>`` (``add_arguments``/``run``)
COMMANDS: dict[str, str] = {
    "study": "train and evaluate architecture/attention pairs and write the comparison report",
    "verdict": (
        "is each attention variant as good as its QKV twin: paired intervals and a verdict at a margin, from a study"
    ),
    "complexity": "parameter and MAC table of every architecture/attention pair",
    "synth": "write a synthetic UW-Madison GI Tract dataset in the Kaggle layout",
    "prepare": "Kaggle-layout folder -> NIfTI volumes + MONAI datalist with 5 folds",
    "dicom": "write a NIfTI volume as a DICOM MR series with its geometry",
    "export": "a self-contained inference bundle that runs with MONAI alone",
    "pacs": "a local Orthanc PACS with DICOMweb: start, stop, status, load MR series",
    "quantize": "int8 post-training quantisation of an inference bundle (OpenVINO)",
    "retrofit": "start a KV bundle from a trained QKV model of the same architecture and fine-tune it",
    "benchmark": "speed and memory of every pair vs its QKV twin, attention scaling, whole case",
    "bundles": "write the MONAI bundles under bundles/ from the template, or --check them",
}


def _repo() -> Path:
    """The folder holding the ``kvmonai`` package: the repository root when kvmonai runs from a checkout."""
    return Path(__file__).resolve().parents[2]


def _build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmonai",
        description="Key-value attention for medical image segmentation on MONAI.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(f"{__name__}.{name}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    parser = _build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(args_list)
    args.argv = args_list  # the command line as given, for reports that quote it
    module = importlib.import_module(f"{__name__}.{args.command}")
    return int(module.run(args) or 0)
