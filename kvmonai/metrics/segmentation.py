"""Segmentation metrics of the KV-attention paper and of the UW-Madison GI Tract competition.

Inputs are binarised multi-label tensors (or arrays) laid out batch-first, channel = class:
``(B, C, H, W)`` for slices or ``(B, C, H, W, D)`` for case-day volumes (slice axis last). Classes may overlap.

* **Jaccard** (the paper's metric): per class ``TP / (TP + FP + FN)`` with the counts summed over every pixel of
  every evaluated sample (as torchmetrics' multilabel ``JaccardIndex``), then the plain mean over classes
  (``reduction="mean"``) or the mean weighted by class support ``TP + FN`` (``reduction="weighted"``).
* **Dice per slice** (the competition's Dice): ``2|P∩G| / (|P|+|G|)`` for each (slice, class) row.
* **Normalised 3D Hausdorff** (the competition's distance): per case-day volume and class, voxel coordinates with
  slice depth 1, symmetric Hausdorff distance between the predicted and true voxel sets, divided by the volume
  diagonal ``sqrt(H² + W² + D²)`` and capped at 1. A class present in only one of the two volumes scores 1.
* **Competition score**: ``0.4 · Dice + 0.6 · (1 − Hausdorff)``.

Empty-vs-empty (the class absent from both prediction and truth) has no defined Dice or distance. Two
conventions are supported everywhere (see ``docs/data.md``):

* ``"skip"`` — the row (or volume) is left out of the mean, as the competition host described and MLE-bench
  grades (default);
* ``"perfect"`` — it counts as a perfect match (Dice 1, distance 0), as many local validation codes do.

An empty truth with a non-empty prediction always counts (Dice 0, distance 1). This is why MONAI's
``DiceMetric(ignore_empty=True)`` is not reused: it also drops those false-positive rows.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import is_binary_tensor

__all__ = [
    "EMPTY_CONVENTIONS",
    "CompetitionScoreMetric",
    "JaccardMetric",
    "SliceDiceMetric",
    "competition_score",
    "competition_scores",
    "confusion_counts",
    "hausdorff_normalized",
    "jaccard_from_counts",
    "jaccard_index",
    "pooled_dice",
    "score_from_parts",
    "slice_dice",
]

#: how a class absent from both prediction and truth counts
EMPTY_CONVENTIONS: tuple[str, str] = ("skip", "perfect")
_REDUCTIONS = ("mean", "weighted", "none")


def _to_bool(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    if t.dtype != torch.bool:
        is_binary_tensor(t, name)  # warns like MONAI's metrics when values are not 0/1
        t = t > 0.5
    return t.cpu()


def _pair(y_pred: Any, y: Any, min_dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _to_bool(y_pred, "y_pred"), _to_bool(y, "y")
    if p.shape != g.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}.")
    if p.ndim < min_dim:
        raise ValueError(f"expected batch-first (B, C, spatial...) with >= {min_dim} dims, got {tuple(p.shape)}.")
    return p, g


def _check_empty(empty: str) -> str:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty must be one of {EMPTY_CONVENTIONS}, got {empty!r}.")
    return empty


def confusion_counts(y_pred: Any, y: Any) -> torch.Tensor:
    """Per-sample, per-class true positives, false positives and false negatives.

    Args:
        y_pred: binary prediction ``(B, C, ...)``.
        y: binary truth, same shape.

    Returns:
        an int64 tensor ``(B, C, 3)`` holding ``(TP, FP, FN)``.

    Raises:
        ValueError: when the shapes differ or are not batch-first with a channel axis.
    """
    p, g = _pair(y_pred, y)
    p, g = p.flatten(2), g.flatten(2)
    tp = (p & g).sum(-1)
    fp = (p & ~g).sum(-1)
    fn = (~p & g).sum(-1)
    return torch.stack([tp, fp, fn], dim=-1).to(torch.int64)


def jaccard_from_counts(
    counts: torch.Tensor, reduction: str = "mean", zero_division: float = float("nan")
) -> torch.Tensor:
    """Jaccard index from ``(TP, FP, FN)`` counts summed over all leading axes.

    Args:
        counts: ``(..., C, 3)`` counts (e.g. from :func:`confusion_counts`).
        reduction: ``"mean"`` (mean over classes), ``"weighted"`` (weighted by class support ``TP + FN``) or
            ``"none"`` (one value per class).
        zero_division: value of a class with ``TP + FP + FN = 0``; NaN (default) leaves it out of the mean.

    Returns:
        a scalar tensor, or ``(C,)`` for ``"none"``.

    Raises:
        ValueError: on an unknown reduction or a last axis other than 3.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    c = torch.as_tensor(counts).to(torch.float64)
    if c.shape[-1] != 3:
        raise ValueError(f"counts must end in (TP, FP, FN), got shape {tuple(c.shape)}.")
    c = c.reshape(-1, c.shape[-2], 3).sum(0)
    tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.tensor(zero_division, dtype=torch.float64))
    if reduction == "none":
        return iou
    valid = ~torch.isnan(iou)
    if reduction == "mean":
        return iou[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=torch.float64)
    support = (tp + fn)[valid]
    if support.sum() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (iou[valid] * support).sum() / support.sum()


def jaccard_index(y_pred: Any, y: Any, reduction: str = "mean", zero_division: float = float("nan")) -> torch.Tensor:
    """Jaccard index over a whole batch (pixels pooled per class).

    Args:
        y_pred: binary prediction ``(B, C, ...)``.
        y: binary truth, same shape.
        reduction: ``"mean"``, ``"weighted"`` or ``"none"`` (see :func:`jaccard_from_counts`).
        zero_division: value for a class absent from both.

    Returns:
        a scalar tensor, or ``(C,)`` for ``"none"``.
    """
    return jaccard_from_counts(confusion_counts(y_pred, y), reduction, zero_division)


def pooled_dice(y_pred: Any, y: Any) -> float:
    """One Dice over all voxels and channels of two binary masks of any shape (1.0 when both are empty).

    For agreement between whole predictions (e.g. fp32 vs a faster inference path), not the paper's metric.

    Args:
        y_pred: binary prediction.
        y: binary truth (or the other prediction), same shape.

    Raises:
        ValueError: when the shapes differ.
    """
    p, g = _pair(y_pred, y, min_dim=1)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2 * int((p & g).sum()) / total


def slice_dice(y_pred: Any, y: Any) -> torch.Tensor:
    """Dice of every (slice, class) row.

    Args:
        y_pred: binary prediction, ``(B, C, H, W)`` slices or ``(B, C, H, W, D)`` volumes (slices on the last axis).
        y: binary truth, same shape.

    Returns:
        float64 ``(B, C, S)`` with ``S = 1`` for 2D input and ``D`` for volumes; NaN where both are empty, 0 where
        exactly one is empty.

    Raises:
        ValueError: when the input is not 4D or 5D or shapes differ.
    """
    p, g = _pair(y_pred, y, min_dim=4)
    if p.ndim == 4:
        p, g = p.unsqueeze(-1), g.unsqueeze(-1)
    if p.ndim != 5:
        raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D), got {tuple(p.shape)}.")
    inter = (p & g).sum((2, 3)).to(torch.float64)
    total = (p.sum((2, 3)) + g.sum((2, 3))).to(torch.float64)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.tensor(float("nan"), dtype=torch.float64))


def _directed_max(a: np.ndarray, b: np.ndarray, sampling: tuple[float, ...]) -> float:
    """max over voxels of ``a`` of the Euclidean distance to the nearest voxel of ``b`` (exact, via an EDT)."""
    from scipy.ndimage import distance_transform_edt

    # crop to the joint bounding box (+1 voxel): distances are unchanged, the transform is much cheaper
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = idx.max(0) + 2
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    dist = distance_transform_edt(~b[box], sampling=sampling)
    return float(dist[a[box]].max())


def hausdorff_normalized(y_pred: Any, y: Any, method: str = "points", normalize: str = "diagonal") -> torch.Tensor:
    """Normalised symmetric 3D Hausdorff distance per volume and class (slice depth 1).

    Args:
        y_pred: binary prediction volumes ``(B, C, H, W, D)``.
        y: binary truth, same shape.
        method: ``"points"``: exact Hausdorff distance between the voxel sets (what the competition text describes,
            scipy ``directed_hausdorff`` on pixel coordinates); ``"surface"``: MONAI's
            ``compute_hausdorff_distance`` between the sets' boundary voxels (1st-place local metric). They differ
            when one set lies inside the other.
        normalize: ``"diagonal"``: distance in voxels divided by ``sqrt(H² + W² + D²)`` (1st-place style);
            ``"unit_cube"``: coordinates divided by the volume shape, distance divided by ``sqrt(3)`` (MLE-bench).

    Returns:
        float64 ``(B, C)`` in ``[0, 1]``; NaN where both are empty, 1 where exactly one is empty.

    Raises:
        ValueError: on an unknown ``method``/``normalize`` or when the input is not 5D.
    """
    if method not in ("points", "surface"):
        raise ValueError(f"method must be 'points' or 'surface', got {method!r}.")
    if normalize not in ("diagonal", "unit_cube"):
        raise ValueError(f"normalize must be 'diagonal' or 'unit_cube', got {normalize!r}.")
    p, g = _pair(y_pred, y)
    if p.ndim != 5:
        raise ValueError(f"expected volumes (B, C, H, W, D), got {tuple(p.shape)}.")
    shape = tuple(int(s) for s in p.shape[2:])
    if normalize == "diagonal":
        sampling = (1.0, 1.0, 1.0)
        scale = math.sqrt(sum(s * s for s in shape))
    else:
        sampling = tuple(1.0 / s for s in shape)
        scale = math.sqrt(3.0)
    out = torch.full(p.shape[:2], float("nan"), dtype=torch.float64)
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            pa, ga = p[b, c].numpy(), g[b, c].numpy()
            has_p, has_g = bool(pa.any()), bool(ga.any())
            if not has_p and not has_g:
                continue
            if has_p != has_g:
                out[b, c] = 1.0
                continue
            if method == "points":
                d = max(_directed_max(pa, ga, sampling), _directed_max(ga, pa, sampling))
            else:
                from monai.metrics import compute_hausdorff_distance

                with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
                    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                    d = float(
                        compute_hausdorff_distance(
                            p[b : b + 1, c : c + 1].float(),
                            g[b : b + 1, c : c + 1].float(),
                            include_background=True,
                            spacing=list(sampling),
                        )[0, 0]
                    )
            out[b, c] = min(d / scale, 1.0)
    return out


def _reduce_dice(rows: torch.Tensor, n_both_empty: torch.Tensor, empty: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of Dice rows per class under a convention; rows = (…, C, 2) of (sum, count)."""
    s, n = rows[..., 0], rows[..., 1]
    if empty == "perfect":
        s, n = s + n_both_empty, n + n_both_empty
    return s, n


def _score_parts(parts: torch.Tensor, empty: str) -> dict[str, Any]:
    """Aggregate (N, C, 4) = (dice sum, dice rows, both-empty rows, hausdorff) into the score components."""
    parts = parts.to(torch.float64)
    dice_sum, dice_n = _reduce_dice(parts[..., :2], parts[..., 2], empty)
    hd = parts[..., 3]
    hd = torch.nan_to_num(hd, nan=0.0) if empty == "perfect" else hd
    class_dice = dice_sum.sum(0) / dice_n.sum(0)
    dice = dice_sum.sum() / dice_n.sum()
    valid = ~torch.isnan(hd)
    class_hd = torch.stack([hd[:, c][valid[:, c]].mean() for c in range(hd.shape[1])])
    mean_hd = hd[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=torch.float64)
    return {
        "score": float(0.4 * dice + 0.6 * (1.0 - mean_hd)),
        "dice": float(dice),
        "hausdorff": float(mean_hd),
        "class_dice": class_dice.tolist(),
        "class_hausdorff": class_hd.tolist(),
    }


def score_from_parts(parts: torch.Tensor, empty: str = "skip") -> dict[str, Any]:
    """Competition score components from per-volume parts, e.g. what a :class:`CompetitionScoreMetric` call returns.

    Lets a caller that already holds a volume's parts (Dice sums and the normalised Hausdorff distances, the costly
    part) report that volume under both conventions without computing the distances again.

    Args:
        parts: ``(N, C, 4)`` per volume and class: Dice sum, Dice rows, both-empty rows, normalised Hausdorff.
        empty: ``"skip"`` or ``"perfect"``.

    Returns:
        as :func:`competition_score`.
    """
    return _score_parts(torch.as_tensor(parts).flatten(0, -3), _check_empty(empty))


def _volume_parts(y_pred: Any, y: Any, method: str) -> torch.Tensor:
    d = slice_dice(y_pred, y)  # (B, C, D)
    both_empty = torch.isnan(d)
    parts = torch.stack(
        [
            torch.nan_to_num(d, nan=0.0).sum(-1),
            (~both_empty).sum(-1).to(torch.float64),
            both_empty.sum(-1).to(torch.float64),
            hausdorff_normalized(y_pred, y, method=method),
        ],
        dim=-1,
    )
    return parts


def competition_score(y_pred: Any, y: Any, empty: str = "skip", method: str = "points") -> dict[str, Any]:
    """The competition score over a batch of case-day volumes.

    Dice is the mean over all (slice, class) rows; the Hausdorff term the mean over all (volume, class) pairs.

    Args:
        y_pred: binary prediction volumes ``(B, C, H, W, D)``.
        y: binary truth, same shape.
        empty: ``"skip"`` or ``"perfect"`` (see the module docstring).
        method: Hausdorff method (see :func:`hausdorff_normalized`).

    Returns:
        ``{"score", "dice", "hausdorff", "class_dice", "class_hausdorff"}`` (floats and per-class lists); a value is
        NaN when every row was skipped.
    """
    return _score_parts(_volume_parts(y_pred, y, method).flatten(0, -3), _check_empty(empty))


def competition_scores(y_pred: Any, y: Any, method: str = "points") -> dict[str, dict[str, Any]]:
    """:func:`competition_score` under both empty conventions, computing the distances once.

    Args:
        y_pred: binary prediction volumes ``(B, C, H, W, D)``.
        y: binary truth, same shape.
        method: Hausdorff method (see :func:`hausdorff_normalized`).

    Returns:
        ``{"skip": {...}, "perfect": {...}}``, each as returned by :func:`competition_score`.
    """
    parts = _volume_parts(y_pred, y, method).flatten(0, -3)
    return {e: _score_parts(parts, e) for e in EMPTY_CONVENTIONS}


class JaccardMetric(CumulativeIterationMetric):
    """Jaccard index (mean or support-weighted over classes) accumulated over iterations, for MONAI evaluators.

    Each call adds per-sample ``(TP, FP, FN)`` counts; :meth:`aggregate` pools them over every sample and pixel.

    Args:
        reduction: ``"mean"`` (the paper's Jaccard), ``"weighted"`` (the paper's weighted Jaccard) or ``"none"``.
        zero_division: value of a class absent from both prediction and truth everywhere (NaN: left out).

    Raises:
        ValueError: on an unknown reduction.
    """

    def __init__(self, reduction: str = "mean", zero_division: float = float("nan")) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction
        self.zero_division = zero_division

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("JaccardMetric needs the ground truth y.")
        return confusion_counts(y_pred, y)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        """Pool the counts of all iterations.

        Args:
            reduction: override of the constructor's reduction.

        Returns:
            a scalar tensor, or ``(C,)`` for ``"none"``.

        Raises:
            ValueError: when nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("JaccardMetric: nothing accumulated yet; call the metric on some batches first.")
        return jaccard_from_counts(data, reduction or self.reduction, self.zero_division)


class SliceDiceMetric(CumulativeIterationMetric):
    """Per-slice Dice (the competition's Dice) accumulated over iterations.

    Accepts slices ``(B, C, H, W)`` or volumes ``(B, C, H, W, D)``; every (slice, class) pair is one row.

    Args:
        empty: ``"skip"`` or ``"perfect"`` for rows empty in both prediction and truth.
        reduction: ``"mean"`` (mean over all rows, as the competition) or ``"none"`` (per-class mean).

    Raises:
        ValueError: on an unknown convention or reduction.
    """

    def __init__(self, empty: str = "skip", reduction: str = "mean") -> None:
        super().__init__()
        self.empty = _check_empty(empty)
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("SliceDiceMetric needs the ground truth y.")
        d = slice_dice(y_pred, y)
        both_empty = torch.isnan(d)
        return torch.stack(
            [
                torch.nan_to_num(d, nan=0.0).sum(-1),
                (~both_empty).sum(-1).to(torch.float64),
                both_empty.sum(-1).to(torch.float64),
            ],
            dim=-1,
        )

    def aggregate(self, empty: str | None = None, reduction: str | None = None) -> torch.Tensor:
        """Mean Dice over the accumulated rows.

        Args:
            empty: override of the constructor's convention.
            reduction: override of the constructor's reduction.

        Returns:
            a scalar tensor, or ``(C,)`` for ``"none"``; NaN when every row was skipped.

        Raises:
            ValueError: when nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("SliceDiceMetric: nothing accumulated yet; call the metric on some batches first.")
        s, n = _reduce_dice(
            data[..., :2].to(torch.float64), data[..., 2].to(torch.float64), _check_empty(empty or self.empty)
        )
        if (reduction or self.reduction) == "none":
            return s.sum(0) / n.sum(0)
        return s.sum() / n.sum()


class CompetitionScoreMetric(CumulativeIterationMetric):
    """The competition score ``0.4 · Dice + 0.6 · (1 − normalised 3D Hausdorff)`` over case-day volumes.

    Every call takes a batch of whole volumes ``(B, C, H, W, D)`` (one case-day each, slices on the last axis).

    Args:
        empty: ``"skip"`` or ``"perfect"`` for classes empty in both prediction and truth.
        method: Hausdorff method, ``"points"`` (exact, default) or ``"surface"`` (MONAI).

    Raises:
        ValueError: on an unknown convention or method.
    """

    def __init__(self, empty: str = "skip", method: str = "points") -> None:
        super().__init__()
        self.empty = _check_empty(empty)
        if method not in ("points", "surface"):
            raise ValueError(f"method must be 'points' or 'surface', got {method!r}.")
        self.method = method

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("CompetitionScoreMetric needs the ground truth y.")
        return _volume_parts(y_pred, y, self.method)

    def _parts(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("CompetitionScoreMetric: nothing accumulated yet; call the metric on some volumes first.")
        return data

    def aggregate(self, empty: str | None = None) -> torch.Tensor:
        """The score over all accumulated volumes.

        Args:
            empty: override of the constructor's convention.

        Returns:
            a scalar float64 tensor.
        """
        return torch.tensor(
            _score_parts(self._parts(), _check_empty(empty or self.empty))["score"], dtype=torch.float64
        )

    def aggregate_all(self) -> dict[str, dict[str, Any]]:
        """Every component under both conventions.

        Returns:
            ``{"skip": {...}, "perfect": {...}}``, each as returned by :func:`competition_score`.
        """
        parts = self._parts()
        return {e: _score_parts(parts, e) for e in EMPTY_CONVENTIONS}
