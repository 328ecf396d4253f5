"""MONAI datalists for the prepared UW-Madison GI Tract volumes: case-grouped folds and per-slice expansion.

A datalist written by ``kvmonai prepare`` is a JSON object whose ``"training"`` list holds one entry per case-day
volume (see ``docs/data.md``)::

    {"image": "imagesTr/case2_day1.nii.gz", "label": "labelsTr/case2_day1.nii.gz", "id": "case2_day1",
     "case": 2, "day": 1, "fold": 3, "num_slices": 144, "shape": [266, 266, 144], "spacing": [1.5, 1.5, 3.0],
     "nonempty_slices": [50, 51, ...], "class_slices": [52, 41, 31]}

It loads with :func:`monai.data.load_decathlon_datalist` (paths are relative to the JSON file) or with
:func:`load_datalist` here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kvmonai.portable.errors import InputNotFoundError

__all__ = ["assign_folds", "expand_slices", "load_datalist", "split_fold"]


def assign_folds(groups: Mapping[int, Sequence[int]], num_folds: int = 5, seed: int = 0) -> dict[int, int]:
    """Assign whole groups (cases) to folds, balancing fold sizes and the share of every stratum.

    This is a stratified group k-fold: every group goes to exactly one fold; groups are visited largest first
    (ties broken by a seeded shuffle) and each goes to the fold that keeps the per-stratum distribution across
    folds most even (lowest mean standard deviation of each stratum's per-fold share), then to the smallest fold.
    For the GI tract data a group is a case and the strata are (empty slices, non-empty slices).

    Args:
        groups: ``group id -> counts per stratum`` (e.g. ``case -> (n_empty_slices, n_nonempty_slices)``).
        num_folds: number of folds.
        seed: seed of the tie-breaking shuffle.

    Returns:
        ``group id -> fold`` with folds ``0 .. num_folds - 1``. With fewer groups than folds some folds stay empty.

    Raises:
        ValueError: when ``num_folds < 2``, ``groups`` is empty or the count vectors differ in length.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}.")
    if not groups:
        raise ValueError("groups is empty; nothing to split into folds.")
    keys = list(groups)
    counts = np.asarray([list(groups[k]) for k in keys], dtype=float)
    if counts.ndim != 2:
        raise ValueError("every group needs the same number of stratum counts.")
    totals = counts.sum(axis=0)
    totals[totals == 0] = 1.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    per_fold = np.zeros((num_folds, counts.shape[1]))
    result: dict[int, int] = {}
    for i in order:
        best, best_key = 0, None
        for f in range(num_folds):
            trial = per_fold.copy()
            trial[f] += counts[i]
            spread = float(np.mean(np.std(trial / totals, axis=0)))
            key = (round(spread, 12), trial[f].sum())
            if best_key is None or key < best_key:
                best, best_key = f, key
        per_fold[best] += counts[i]
        result[keys[i]] = best
    return result


def load_datalist(path: str | os.PathLike, key: str = "training") -> list[dict[str, Any]]:
    """Load a datalist JSON with ``image``/``label`` paths made absolute (via MONAI's decathlon loader).

    Args:
        path: the JSON file written by ``kvmonai prepare``.
        key: the list to load.

    Returns:
        the entries, one per case-day volume.

    Raises:
        InputNotFoundError: (a ``FileNotFoundError``) when ``path`` does not exist.
        ValueError: when the file lacks ``key``.
    """
    from monai.data import load_decathlon_datalist

    if not Path(path).is_file():
        raise InputNotFoundError(f"datalist {path}: no such file; write it with kvmonai prepare, or pass --datalist.")

    return load_decathlon_datalist(os.fspath(path), is_segmentation=True, data_list_key=key, base_dir=Path(path).parent)


def split_fold(items: Sequence[Mapping[str, Any]], fold: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split datalist entries into training and validation for one fold.

    Args:
        items: entries carrying a ``"fold"`` field.
        fold: the validation fold.

    Returns:
        ``(train, validation)``: entries of the other folds and of ``fold``.

    Raises:
        ValueError: when an entry has no ``"fold"`` or no entry belongs to ``fold``.
    """
    train, val = [], []
    for item in items:
        if "fold" not in item:
            raise ValueError(f"datalist entry {item.get('id', item.get('image'))!r} has no 'fold'; re-run prepare.")
        (val if int(item["fold"]) == fold else train).append(dict(item))
    if not val:
        raise ValueError(
            f"no datalist entry belongs to fold {fold}; folds present: {sorted({i['fold'] for i in items})}."
        )
    return train, val


def expand_slices(
    items: Sequence[Mapping[str, Any]],
    nonempty_only: bool = False,
    slice_key: str = "slice",
    drop: Sequence[str] = ("nonempty_slices",),
) -> list[dict[str, Any]]:
    """Turn volume entries into one entry per slice, for slice-based (2D / 2.5D) training or evaluation.

    Each output entry is a copy of its volume entry (minus the keys in ``drop``) plus ``slice_key`` (0-based slice
    index along the last spatial axis) and ``"nonempty"`` (whether any organ is present, from the datalist).
    Use it with :class:`kvmonai.portable.transforms.ExtractSliced` after loading the volume; for large sets, prefer
    loading each volume once (see ``docs/data.md``).

    Args:
        items: volume entries with ``"num_slices"`` and ``"nonempty_slices"``.
        nonempty_only: keep only slices with at least one organ.
        slice_key: name of the slice-index field.
        drop: keys not copied into the slice entries.

    Returns:
        the slice entries, volume by volume, slices ascending.

    Raises:
        ValueError: when an entry lacks ``"num_slices"``.
    """
    out: list[dict[str, Any]] = []
    for item in items:
        if "num_slices" not in item:
            raise ValueError(
                f"datalist entry {item.get('id', item.get('image'))!r} has no 'num_slices'; use a prepare datalist."
            )
        nonempty = {int(z) for z in item.get("nonempty_slices", ())}
        base = {k: v for k, v in item.items() if k not in drop}
        for z in range(int(item["num_slices"])):
            if nonempty_only and z not in nonempty:
                continue
            entry = dict(base)
            entry[slice_key] = z
            entry["nonempty"] = z in nonempty
            out.append(entry)
    return out
