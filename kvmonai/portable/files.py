"""Atomic file output: readers never see a partial file, and a failed write leaves an earlier file intact."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TEMP_GLOB", "atomic_output"]

#: glob of the temporary files of :func:`atomic_output` (left behind only by a process killed while writing)
TEMP_GLOB = ".*.tmp*"


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds, delete it otherwise.

    Readers never see a partial file and an earlier ``path`` survives a failed write. The temporary name keeps the
    suffix of ``path`` (``.pt``, ``.png``, ``.npz``, ``.nii.gz``...), so writers that infer the format from it work
    unchanged; it starts with a dot and matches :data:`TEMP_GLOB`.
    The file gets the mode a plain ``open`` would give it (``0666`` less the umask), not ``mkstemp``'s ``0600``.

    Args:
        path: the destination; its folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix  # .nii.gz, .tar.gz
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it the usual mode
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only still there when the block failed
