"""Segmentation metrics: the paper's Jaccard and weighted Jaccard, per-slice Dice and the UW-Madison GI Tract
competition score (Dice + normalised 3D Hausdorff), as plain functions and as MONAI cumulative metrics."""

from kvmonai.metrics.segmentation import *  # noqa: F403  (the package's API is the module's)
from kvmonai.metrics.segmentation import __all__ as __all__
