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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLES_ENV", "COMMANDS", "main"]

#: name -> (module implementing ``add_arguments``/``run``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "study": ("kvmonai.cli.study", "train and evaluate architecture/attention pairs and write the comparison report"),
    "complexity": ("kvmonai.cli.complexity", "parameter and MAC table of every architecture/attention pair"),
    "synth": ("kvmonai.cli.synth", "write a synthetic UW-Madison GI Tract dataset in the Kaggle layout"),
    "prepare": ("kvmonai.cli.prepare", "Kaggle-layout folder -> NIfTI volumes + MONAI datalist with 5 folds"),
    "dicom": ("kvmonai.cli.dicom", "write a NIfTI volume as a DICOM MR series with its geometry"),
    "export": (
        "kvmonai.cli.export",
        "a self-contained inference bundle that runs with MONAI alone",
    ),
    "pacs": ("kvmonai.cli.pacs", "a local Orthanc PACS with DICOMweb: start, stop, status, load MR series"),
    "quantize": ("kvmonai.cli.quantize", "int8 post-training quantisation of an inference bundle (OpenVINO)"),
    "retrofit": (
        "kvmonai.cli.retrofit",
        "start a KV bundle from a trained QKV model of the same architecture and fine-tune it",
    ),
    "benchmark": (
        "kvmonai.cli.benchmark",
        "speed and memory of every pair vs its QKV twin, attention scaling, whole case",
    ),
    "bundles": ("kvmonai.cli.bundles", "write the MONAI bundles under bundles/ from the template, or --check them"),
}

#: the environment variable naming the bundles folder (as for the MONAI Label app)
BUNDLES_ENV = "KVMONAI_BUNDLES"


def _repo() -> Path:
    """The folder holding the ``kvmonai`` package: the repository root when kvmonai runs from a checkout."""
    return Path(__file__).resolve().parents[2]


def _bundles_dir() -> Path:
    """The bundles folder: ``$KVMONAI_BUNDLES``, else the repository's ``bundles/``."""
    env = os.environ.get(BUNDLES_ENV)
    return Path(env) if env else _repo() / "bundles"


def _find_bundle(text: str | os.PathLike) -> Path:
    """A bundle given as a folder (``bundles/setr_kv``) or by its name in the bundles folder (``setr_kv``).

    Args:
        text: the command-line argument.

    Returns:
        the bundle folder.

    Raises:
        FileNotFoundError: when ``text`` is neither a folder nor the name of a bundle in the bundles folder; the
            message names where it looked and the known bundle names.
    """
    path = Path(text)
    if path.is_dir():
        return path
    root = _bundles_dir()
    is_name = len(path.parts) == 1 and not path.is_absolute()
    if is_name and (root / path.name / "configs").is_dir():
        return root / path.name
    known = sorted(f.parents[1].name for f in root.glob("*/configs/inference.json"))
    looked = f"the folder {path}"
    if is_name:
        looked += f" and the bundle {root / path.name} (the bundles folder; {BUNDLES_ENV} sets another)"
    names = ", ".join(known) if known else f"none ({root} holds no bundle)"
    raise FileNotFoundError(f"{text}: no such bundle; looked for {looked}. Known bundles: {names}.")


def _build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmonai",
        description="Key-value attention for medical image segmentation on MONAI.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    parser = _build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(args_list)
    args.argv = args_list  # the command line as given, for reports that quote it
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)
