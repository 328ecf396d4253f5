"""Helpers shared across kvmonai: atomic file output (write to a temporary file, then rename) and figures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["as_flag", "atomic_output", "lazy_exports", "pyplot", "save_figure", "write_text_atomic"]


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds, delete it otherwise.

    Readers never see a partial file and an earlier ``path`` survives a failed write. The temporary name keeps the
    suffix of ``path`` (``.pt``, ``.png``, ``.npz``...), so writers that infer the format from it work unchanged.

    Args:
        path: the destination; its folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only still there when the block failed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


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
        submodules: public name -> submodule (relative to ``package``) that defines it.
        names: the package's ``__all__``.
    """
    import importlib
    import sys

    def module_getattr(name: str) -> Any:
        module = submodules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # cached: later lookups skip __getattr__
        return value

    def module_dir() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return module_getattr, module_dir


def as_flag(name: str, value: object) -> bool:
    """A boolean setting from a bundle config or command line: ``True``/``False`` or the strings true/false/1/0.

    ``python -m monai.bundle run --mlflow false`` passes the *string* ``"false"``, which Python would call true.

    Raises:
        ValueError: for anything else, naming the setting.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")
