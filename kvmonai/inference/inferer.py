"""A slice-by-slice inferer with mixed precision and channels-last inputs, for CPUs and GPUs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SliceInferer

from kvmonai.inference.optimize import autocast_dtype
from kvmonai.utils import as_flag

__all__ = ["FastSliceInferer"]


class FastSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` that runs the network under autocast and on channels-last slices.

    MONAI's evaluators only autocast on CUDA; this inferer autocasts on whichever device the input lives on, in the
    dtype chosen by :func:`~kvmonai.inference.autocast_dtype` (``"auto"``: bf16 where the hardware runs it natively).
    Outputs are returned in fp32, so post-processing (sigmoid, threshold, inversion) is unchanged.

    Args:
        roi_size: the 2D window size (the network's input size).
        sw_batch_size: slices per network call.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: feed the network channels-last slices.
        spatial_dim: the volume axis the slices are taken along (MONAI's convention; 2 is the last axis).
        kwargs: further :class:`~monai.inferers.SliceInferer` arguments (``overlap``, ``mode``, ``progress``...).

    Raises:
        ValueError: for an unknown ``precision`` or a ``channels_last`` that is not a boolean.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 16,
        precision: str = "auto",
        channels_last: bool = True,
        spatial_dim: int = 2,
        **kwargs: Any,
    ) -> None:
        autocast_dtype(precision, "cpu" if precision != "fp16" else "cuda")  # validates early
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, spatial_dim=spatial_dim, **kwargs)
        self.precision = precision
        self.channels_last = as_flag("channels_last", channels_last)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        dtype = autocast_dtype(self.precision, inputs.device)

        def run(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if dtype is None:
                return network(x, *a, **k)
            with torch.autocast(inputs.device.type, dtype=dtype):
                return network(x, *a, **k).float()

        return super().__call__(inputs, run, *args, **kwargs)
