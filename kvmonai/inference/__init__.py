"""Fast inference: mixed precision, channels-last and exact network rewrites (``kvmonai benchmark`` measures them)."""

from kvmonai.inference.inferer import AutocastInferer, FastSliceInferer, autocast_call
from kvmonai.inference.optimize import (
    PRECISIONS,
    autocast_dtype,
    fold_batch_norms,
    freeze_for_inference,
    inplace_activations,
    optimize_for_inference,
)

__all__ = [
    "PRECISIONS",
    "AutocastInferer",
    "FastSliceInferer",
    "autocast_call",
    "autocast_dtype",
    "fold_batch_norms",
    "freeze_for_inference",
    "inplace_activations",
    "optimize_for_inference",
]
