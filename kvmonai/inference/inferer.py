"""Inferers with mixed precision and channels-last inputs, for CPUs and GPUs: whole slices and slice-by-slice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SimpleInferer, SliceInferer

from kvmonai.inference.optimize import autocast_dtype
from kvmonai.utils import as_flag

__all__ = ["AutocastInferer", "FastSliceInferer", "autocast_call"]


def autocast_call(
    network: Callable[..., torch.Tensor],
    x: torch.Tensor,
    dtype: torch.dtype | None,
    channels_last: bool,
    *a: Any,
    **k: Any,
) -> torch.Tensor:
    """``network(x)`` under autocast to ``dtype`` (``None``: plain fp32) on ``x``'s device, returned in fp32.

    MONAI's trainers and evaluators autocast only on CUDA (``torch.autocast("cuda")``); this runs on whichever device
    ``x`` lives on, so CPUs with native bf16 get it too. The output is cast back to fp32, so losses, sigmoid,
    thresholds and inversion see the dtype they expect.
    """  # fmt: skip
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if dtype is None:
        return network(x, *a, **k)
    with torch.autocast(x.device.type, dtype=dtype):
        return network(x, *a, **k).float()


class AutocastInferer(SimpleInferer):
    """MONAI's :class:`~monai.inferers.SimpleInferer` under autocast on any device: the bundles' training inferer.

    ``SupervisedTrainer(amp=True)`` autocasts to fp16 on CUDA only, so CPU training would stay in fp32 even where the
    CPU runs bf16 natively. Used as the trainer's ``inferer``, this runs the forward pass (and so its backward) in
    the dtype chosen by :func:`~kvmonai.inference.autocast_dtype` (``"auto"``: bf16 on CPUs with AVX512-BF16/AMX and
    on GPUs with bf16, fp32 elsewhere) and returns fp32 logits, so the loss is computed in fp32. bf16 needs no
    gradient scaler; keep the trainer's own ``amp`` off when using it.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: feed the network channels-last images.

    Raises:
        ValueError: for an unknown ``precision`` or a ``channels_last`` that is not a boolean.
    """

    def __init__(self, precision: str = "auto", channels_last: bool = False) -> None:
        autocast_dtype(precision, "cpu" if precision != "fp16" else "cuda")  # validates early
        super().__init__()
        self.precision = precision
        self.channels_last = as_flag("channels_last", channels_last)

    def dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype used on ``device`` (``None``: fp32)."""
        return autocast_dtype(self.precision, device)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return autocast_call(network, inputs, self.dtype(inputs.device), self.channels_last, *args, **kwargs)


class FastSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` that runs the network under autocast and on channels-last slices.

    MONAI's evaluators only autocast on CUDA; this inferer autocasts on whichever device the input lives on, in the
    dtype chosen by :func:`~kvmonai.inference.autocast_dtype` (``"auto"``: bf16 where the hardware runs it natively).
    Outputs are returned in fp32, so post-processing (sigmoid, threshold, inversion) is unchanged.

    Args:
        roi_size: the 2D window size (the network's input size).
        sw_batch_size: slices per network call.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``; ``"int8"`` (a bundle whose
            :class:`~kvmonai.inference.RuntimeNetwork` runs the int8 OpenVINO model) autocasts nothing.
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
        precision = "fp32" if precision == "int8" else precision  # int8 is OpenVINO's (RuntimeNetwork): no autocast
        autocast_dtype(precision, "cpu" if precision != "fp16" else "cuda")  # validates early
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, spatial_dim=spatial_dim, **kwargs)
        self.precision = precision
        self.channels_last = as_flag("channels_last", channels_last)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        dtype = autocast_dtype(self.precision, inputs.device)

        def run(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            return autocast_call(network, x, dtype, self.channels_last, *a, **k)

        return super().__call__(inputs, run, *args, **kwargs)
