"""Atomic file output: readers never see a partial file, and a failed write leaves an earlier file intact."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds, delete it otherwise.

    Readers never see a partial file and an earlier ``path`` survives a failed write. The temporary name keeps the
    suffix of ``path`` (``.pt``, ``.png``, ``.npz``...), so writers that infer the format from it work unchanged.
    The file gets the mode a plain ``open`` would give it (``0666`` less the umask), not ``mkstemp``'s ``0600``.

    Args:
        path: the destination; its folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it the usual mode
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only still there when the block failed
