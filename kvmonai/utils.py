"""Helpers shared across kvmonai: atomic file output (write to a temporary file, then rename), CSV and markdown
tables, command-line integer lists and figures."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvmonai.portable.errors import KVMonaiError  # the base of kvmonai's user-facing errors (exported bundles too)
from kvmonai.portable.files import atomic_output  # one implementation, which exported bundles carry too

__all__ = [
    "KVMonaiError",
    "add_count_argument",
    "add_override_argument",
    "as_flag",
    "bounded_int",
    "atomic_output",
    "check_option",
    "config_override",
    "csv_text",
    "int_list",
    "lazy_exports",
    "markdown_table",
    "pyplot",
    "save_figure",
    "short_list",
    "write_text_atomic",
]


def config_override(text: str) -> tuple[str, Any]:
    """``argparse`` type of ``--set id=value``: the config id and its value, parsed as JSON where it parses.

    Raises:
        argparse.ArgumentTypeError: when ``text`` has no ``=`` or no id.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes id=value (a config id of inference.json), got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_override_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add the repeatable ``--set id=value`` option (``args.overrides``: a list of ``(id, value)``) to ``parser``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", type=config_override, default=[], metavar="ID=VALUE", help=help_text
    )


def add_count_argument(
    parser: argparse.ArgumentParser, flag: str, *, minimum: int = 1, multiple_of: int = 1, **kwargs: Any
) -> None:
    """Add the integer option ``flag`` to ``parser``, parsed by :func:`bounded_int` (its errors name ``flag``).

    Args:
        parser: the command's parser.
        flag: the option, e.g. ``"--epochs"``.
        minimum: the smallest value allowed.
        multiple_of: the value must be a multiple of this.
        kwargs: the other ``add_argument`` keywords (``default``, ``help``, ...).
    """
    parser.add_argument(flag, type=bounded_int(flag, minimum, multiple_of), **kwargs)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def short_list(items: Iterable[Any], limit: int = 5, sep: str = ", ", empty: str = "none") -> str:
    """The first ``limit`` of ``items`` joined by ``sep``, then ``(+N more)``: how messages list keys, files or ids
    that may run into thousands (a ViT's state dict has hundreds of keys).

    Args:
        items: what to list (written with ``str``), in the order given.
        limit: how many to show.
        sep: the separator.
        empty: the text when there are none.
    """
    shown = [str(i) for i in items]
    if not shown:
        return empty
    return sep.join(shown[:limit]) + (f" (+{len(shown) - limit} more)" if len(shown) > limit else "")


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None) -> str:
    """CSV text of ``rows``: a header line, then one line per row; ``"\\n"`` line ends, fields quoted where needed.

    ``None`` values and keys a row lacks are written as empty fields; no columns at all (no rows and no ``fields``)
    give an empty text. Write the text with :func:`write_text_atomic`.

    Args:
        rows: one mapping (column -> value) per line.
        fields: the columns, in order; default: every key of ``rows``, in the order of first appearance.

    Raises:
        ValueError: when a row holds a key missing from ``fields``.
    """
    if fields is None:
        rows = list(rows)
        fields = list(dict.fromkeys(k for r in rows for k in r))
    if not fields:
        return ""
    known = set(fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), restval="", lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows):  # one at a time: with ``fields`` given, ``rows`` may be a generator
        extra = [k for k in row if k not in known]
        if extra:
            raise ValueError(f"csv_text: row {i} has columns {extra} that are not in fields; add them to fields.")
        writer.writerow(row)
    return buffer.getvalue()


_ALIGN = {"left": "---", "right": "---:", "center": ":---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table: ``| a | b |`` lines, the separator line after the header; no final newline.

    Cells are written with ``str``; a ``|`` inside a cell is escaped (``\\|``) so it cannot split the cell.

    Args:
        header: the column titles.
        rows: the cells of each line, one per column.
        align: per column ``"left"`` (the markdown default, written ``---``), ``"right"`` (``---:``) or
            ``"center"`` (``:---:``); default: every column left.

    Raises:
        ValueError: when ``align`` or a row does not have one entry per column, or an alignment is unknown.
    """
    align = ["left"] * len(header) if align is None else list(align)
    if len(align) != len(header):
        raise ValueError(f"markdown_table: {len(header)} columns but {len(align)} alignments; give one per column.")
    unknown = sorted(set(align) - set(_ALIGN))
    if unknown:
        raise ValueError(f"markdown_table: unknown alignment {unknown}; use {', '.join(_ALIGN)}.")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "".join(f"{_ALIGN[a]}|" for a in align)]
    for i, cells in enumerate(rows):
        cells = list(cells)
        if len(cells) != len(header):
            raise ValueError(
                f"markdown_table: row {i} has {len(cells)} cells for {len(header)} columns; give one per column."
            )
        lines.append(line(cells))
    return "\n".join(lines)


def bounded_int(name: str, minimum: int = 1, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse ``type`` for one integer ``>= minimum`` (and a multiple of ``multiple_of``), e.g. ``--epochs``.

    Args:
        name: the option, named in the error message.
        minimum: the smallest value allowed.
        multiple_of: the value must be a multiple of this.

    Returns:
        a parser that raises ``argparse.ArgumentTypeError`` (a usage error, no traceback) naming ``name``.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes an integer, got {text!r}.") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}.")
        if value % multiple_of:
            raise argparse.ArgumentTypeError(f"{name} must be a multiple of {multiple_of}, got {value}.")
        return value

    parse.__name__ = f"bounded_int({name})"
    return parse


def int_list(name: str, minimum: int | None = None) -> Callable[[str], list[int]]:
    """An argparse ``type`` for comma-separated integers such as ``0,1,2``, e.g. ``type=int_list("--folds")``.

    Args:
        name: the option, named in the error message.
        minimum: the smallest value allowed (default: no limit).

    Returns:
        a function from the option's text to the list of integers; it raises ``argparse.ArgumentTypeError``
        (which argparse reports as a usage error) naming ``name`` for an empty item, a non-integer or a value
        below ``minimum``.
    """

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers for {name}, such as 0,1,2, got {text!r}."
            ) from None
        if minimum is not None and any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum} for {name}, got {text!r}.")
        return values

    parse.__name__ = f"int_list({name})"  # argparse names the type in some of its messages
    return parse


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (servers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (tight bounding box) and close it; returns ``path``."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return Path(path)


def lazy_exports(
    package: str, submodules: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` (PEP 562) that import a public name from its submodule on first use.

    A package keeps ``import kvmonai.<package>`` cheap this way (no torch/MONAI import until a name is used).

    Args:
        package: the package's ``__name__``.
        submodules: public name -> submodule that defines it: relative to ``package``, or absolute
            (``kvmonai.portable.transforms``).
        names: the package's ``__all__``.
    """
    import importlib
    import sys

    def module_getattr(name: str) -> Any:
        module = submodules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = module if module.startswith("kvmonai.") else f"{package}.{module}"  # absolute, or relative
        value = getattr(importlib.import_module(target), name)
        setattr(sys.modules[package], name, value)  # cached: later lookups skip __getattr__
        return value

    def module_dir() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return module_getattr, module_dir


_TRUE_WORDS = ("true", "t", "yes", "y", "on", "1")
_FALSE_WORDS = ("false", "f", "no", "n", "off", "0")


def as_flag(name: str, value: object) -> bool:
    """A boolean setting from a bundle config, a command line or a MONAI Label request.

    ``python -m monai.bundle run --mlflow false`` passes the *string* ``"false"``, which Python would call true; so do
    MONAI Label clients. Accepted: ``True``/``False``, the integers 1/0 and, in any case, the words of
    ``distutils.util.strtobool`` (true/t/yes/y/on/1 and false/f/no/n/off/0).

    Args:
        name: the setting's name, for the error message.
        value: the value to read.

    Raises:
        ValueError: for anything else, naming the setting.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def check_option(name: str, value: Any, allowed: Sequence[Any], hint: str = "") -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise an error that names the argument and its choices.

    The one option check of kvmonai's constructors and factories. MONAI's ``look_up_option`` serves the same purpose
    but its message does not name the argument, which is what a user reading a bundle config needs.

    Args:
        name: the argument's name, as the user writes it (``"attention"``, ``"kv_mode"``...).
        value: the given value.
        allowed: the accepted values.
        hint: a sentence appended to the message (why a value is missing, what to do).

    Raises:
        ValueError: ``"<name> must be one of (...), got <value>."`` followed by ``hint``.
    """
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}." + (f" {hint}" if hint else ""))
    return value
