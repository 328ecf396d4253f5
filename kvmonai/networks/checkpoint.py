"""Checkpoint files: atomic writes and safe loads (``weights_only=True``) with errors that say what to do."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kvmonai.utils import KVMonaiError, atomic_output, short_list

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "save_atomic", "state_mismatch", "unwrap_model"]


class CheckpointError(KVMonaiError, ValueError):
    """A checkpoint file is missing, truncated, not a torch file or does not fit the model."""


def unwrap_model(model: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (its state dict has the plain keys),
    or ``model`` itself."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: readers never see a partial file.

    MONAI's ``CheckpointSaver`` does not serve here: it saves through ignite's ``DiskSaver`` with ``atomic=False``,
    so a run killed while saving leaves a truncated checkpoint (or ``models/model.pt``) behind.

    Args:
        obj: what to save (a state dict or a dict of state dicts).
        path: destination; its folder is created.

    Returns:
        the destination path.
    """
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs), turning torch errors into clear ones.

    Args:
        path: the ``.pt`` file.
        map_location: device mapping for ``torch.load``.
        mmap: map the file instead of reading it (tensors are paged in when used; no second copy of the weights in
            memory); files in torch's legacy format are read normally.

    Returns:
        the loaded dictionary.

    Raises:
        CheckpointError: if the file is missing, empty, truncated, not written by ``torch.save`` or holds objects
            other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train the bundle first or pass the right path.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted copy?): delete it and copy it again.")
    try:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not (mmap and "mmap" in str(e)):
                raise
            obj = torch.load(path, map_location=map_location, weights_only=True)  # legacy format: no mmap
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, KeyError, EOFError...)
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors, so it is refused (weights_only=True loads "
                "only weights; a foreign or tampered file?). Re-export it as a plain state dict."
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({type(e).__name__}): copy it again, or "
            "resume from an earlier checkpoint."
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights.")
    return dict(obj)


def state_mismatch(model: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """A short description of how ``state`` does not fit ``model`` (first keys and counts), or ``None`` if it fits.

    torch's own ``load_state_dict`` error lists every key, tens of kilobytes for a ViT, and says nothing of the cause.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

    parts = [
        f"{label}: {short_list(keys, 4)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    return "; ".join(parts) or None


def load_weights(model: nn.Module, path: str | os.PathLike, key: str | None = None, map_location: Any = "cpu") -> None:
    """Load network weights from ``path`` into ``model`` with a clear error when they do not fit.

    Args:
        model: the network.
        path: a plain state dict, or a training checkpoint holding it under ``key`` (``"model"`` by default
            when present).
        key: entry of the checkpoint that holds the state dict.
        map_location: device mapping.

    Raises:
        CheckpointError: if the file cannot be loaded or its keys/shapes do not match ``model`` (e.g. weights of
            another architecture or attention variant).
    """
    ckpt = load_checkpoint(path, map_location, mmap=True)  # copied into the parameters, then released
    if key is None and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        key = "model"
    state = ckpt[key] if key is not None else ckpt
    details = state_mismatch(model, state)
    if details:
        raise CheckpointError(
            f"weights in {path} do not fit {type(model).__name__} ({details}). Were they trained with another "
            "architecture, attention variant or preset?"
        )
    model.load_state_dict(state)
