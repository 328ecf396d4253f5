"""Check a bundle's training settings before any work starts, with messages that name the setting and the fix.

``python -m monai.bundle run`` passes command-line values through unchecked: ``--max_epochs abc`` or
``--img_size 0`` fail deep inside torch or ignite with a traceback, an empty training split fails in the sampler, a
read-only output folder fails at the first checkpoint, and an unreachable ``MLFLOW_TRACKING_URI`` is retried for
minutes. :func:`check_train_settings` runs as an early ``initialize`` step of ``train.json`` and raises
:class:`SettingsError` at once instead; like every :class:`~kvmonai.utils.KVMonaiError`, it ends the run with its
message alone (see :func:`kvmonai.portable.errors.report_errors`, the first ``initialize`` step).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kvmonai.utils import KVMonaiError, as_flag

__all__ = ["SettingsError", "check_train_settings"]

#: seconds to wait for a remote MLflow tracking server before refusing to start
MLFLOW_TIMEOUT_S = 5.0


class SettingsError(KVMonaiError, ValueError):
    """A bundle setting is invalid; the message names it and says what to do."""


def _integer(name: str, value: Any, minimum: int, multiple_of: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise SettingsError(f"{name}: expected an integer >= {minimum}, got {value!r} (--{name} N).")
    number = int(value)
    if number < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {number} (--{name} N).")
    if number % multiple_of:
        raise SettingsError(f"{name}: must be a multiple of {multiple_of}, got {number} (e.g. --{name} 64).")
    return number


def _writable(name: str, folder: str | os.PathLike) -> None:
    path = Path(folder)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise SettingsError(f"{name}: {parent} is a file, not a folder; choose another --{name}.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SettingsError(f"{name}: {parent} is not writable; choose a folder you can write (--{name}).")
            return


def _datalist(path: str | os.PathLike, fold: int) -> None:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"datalist: {p} does not exist; run kvmonai prepare first, or pass --datalist.")
    try:
        entries = json.loads(p.read_text())["training"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SettingsError(f"datalist: {p} is not a kvmonai datalist ({e}); write it with kvmonai prepare.") from None
    folds = sorted({int(v.get("fold", -1)) for v in entries})
    train = [v for v in entries if int(v.get("fold", -1)) != fold]
    val = [v for v in entries if int(v.get("fold", -1)) == fold]
    if not val:
        raise SettingsError(f"fold: {fold} is not in {p} (its folds: {folds}); choose one of them (--fold).")
    if not train:
        raise SettingsError(
            f"fold: every volume of {p} is in fold {fold}, so the training split is empty; prepare more cases "
            "(kvmonai prepare --folds) or choose another fold."
        )


def _tracking(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=MLFLOW_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SettingsError(
            f"MLflow tracking server {uri} did not answer within {MLFLOW_TIMEOUT_S:.0f} s ({e}); start it, fix "
            "MLFLOW_TRACKING_URI, or train without tracking (--mlflow false)."
        ) from None


def check_train_settings(
    max_epochs: Any,
    val_interval: Any,
    img_size: Any,
    volumes_per_batch: Any,
    slices_per_volume: Any,
    num_workers: Any,
    fold: Any,
    seed: Any,
    datalist: str,
    output_dir: str,
    ckpt_dir: str,
    mlflow: Any = True,
    tracking_uri: str | None = None,
    check_datalist: Any = True,
) -> bool:
    """Check the training settings of ``train.json``; returns ``True`` (for use in an ``initialize`` list).

    Raises:
        SettingsError: for a non-integer or out-of-range number, a missing fold or an empty training split, an
            output or checkpoint folder that is a file or not writable, or a remote tracking server that does
            not answer within :data:`MLFLOW_TIMEOUT_S`.
    """
    _integer("max_epochs", max_epochs, 1)
    _integer("val_interval", val_interval, 1)
    _integer("img_size", img_size, 16, multiple_of=16)
    _integer("volumes_per_batch", volumes_per_batch, 1)
    _integer("slices_per_volume", slices_per_volume, 1)
    _integer("num_workers", num_workers, 0)
    _integer("seed", seed, 0)
    fold = _integer("fold", fold, 0)
    if as_flag("check_datalist", check_datalist):  # off where data_split is given directly (the MONAI Label app)
        _datalist(datalist, fold)
    _writable("output_dir", output_dir)
    _writable("ckpt_dir", ckpt_dir)
    if as_flag("mlflow", mlflow):
        _tracking(os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or "")
    return True
