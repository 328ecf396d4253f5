"""Segmentation metrics: the paper's Jaccard and weighted Jaccard, per-slice Dice and the UW-Madison GI Tract
competition score (Dice + normalised 3D Hausdorff), as plain functions and as MONAI cumulative metrics."""

from kvmonai.metrics.segmentation import (
    EMPTY_CONVENTIONS,
    CompetitionScoreMetric,
    JaccardMetric,
    SliceDiceMetric,
    competition_score,
    competition_scores,
    confusion_counts,
    hausdorff_normalized,
    jaccard_from_counts,
    jaccard_index,
    pooled_dice,
    score_from_parts,
    slice_dice,
)

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
