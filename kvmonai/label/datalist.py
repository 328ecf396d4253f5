"""Training lists from MONAI Label's datastore: label values per study and the train/validation split."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["label_values", "split_items"]


def label_values(label_info: Any, labels: Mapping[str, int]) -> list[int]:
    """The value each organ has in one saved label map, in the order of ``labels``' values.

    3D Slicer saves the segments it holds with their names (``label_info``: ``[{"name": ..., "idx": ...}]``); when
    the names are the organs', their ``idx`` are used, so renumbered or reordered segments still train the right
    channel, and an organ with no segment gets ``-1`` (an empty channel). Without usable ``label_info`` (files
    placed in ``labels/final`` by hand, other clients) the map is taken to use the app's values.

    Args:
        label_info: the ``label_info`` entry of the label's datastore info, or ``None``.
        labels: organ name -> value in the app's label maps (``{"large_bowel": 1, ...}``).

    Returns:
        one value per organ, organs ordered by their app value.
    """
    organs = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    default = [labels[name] for name in organs]
    if not isinstance(label_info, Sequence) or isinstance(label_info, str):
        return default
    found: dict[str, int] = {}
    for entry in label_info:
        if isinstance(entry, Mapping) and entry.get("name") in labels:
            try:
                found[str(entry["name"])] = int(entry["idx"])
            except (KeyError, TypeError, ValueError):
                return default
    if not found:
        return default
    return [found.get(name, -1) for name in organs]


def split_items(
    items: Sequence[Mapping[str, Any]], val_split: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Split labelled studies into training and validation.

    ``round(n * val_split)`` studies (at least one, at most ``n - 1``) are held out, chosen reproducibly by
    ``seed``. With one study or ``val_split`` 0 nothing can be held out: validation then runs on the training
    studies (in-sample; the best-model choice still works but says little).

    Args:
        items: the labelled studies.
        val_split: fraction held out for validation, in ``[0, 1)``.
        seed: seed of the shuffle.

    Returns:
        ``(train, validation, in_sample)``.

    Raises:
        ValueError: when ``items`` is empty or ``val_split`` is outside ``[0, 1)``.
    """
    if not items:
        raise ValueError(
            "no labelled studies: save at least one label (3D Slicer 'Submit Label'; MONAI Label keeps them in "
            "<studies>/labels/final) before training."
        )
    if not 0.0 <= float(val_split) < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}.")
    order = [dict(i) for i in items]
    n = len(order)
    n_val = min(max(1, round(n * float(val_split))), n - 1) if val_split > 0 and n > 1 else 0
    if n_val == 0:
        return order, [dict(i) for i in order], True
    random.Random(seed).shuffle(order)
    return order[n_val:], order[:n_val], False
