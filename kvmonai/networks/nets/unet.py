"""The convolutional reference of the study: MONAI's ``BasicUNet`` in 2D, no attention at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import BasicUNet

__all__ = ["PRESETS", "UNetCNN"]

#: constructor arguments of each preset (beyond in/out channels, img_size and attention)
PRESETS: dict[str, dict[str, Any]] = {
    # MONAI's default widths (32, 32, 64, 128, 256, 32): 1.9 M parameters in 2D, a light reference next to ViT-B
    "paper": {"features": (32, 32, 64, 128, 256, 32)},
    "small": {"features": (16, 16, 32, 64, 128, 16)},
    "tiny": {"features": (4, 4, 8, 8, 16, 4)},
}


class UNetCNN(BasicUNet):
    """MONAI ``BasicUNet`` (2D) as the study's CNN reference row: what the transformers cost and buy.

    MONAI's network unchanged (four 2x poolings, two 3x3 conv + instance norm + LeakyReLU blocks per level, skip
    concatenations); this class only gives it the factory's signature. It has no attention, so ``attention`` must be
    ``"cnn"``; ``img_size`` is accepted for the common signature and checked (each side divisible by 16, the four
    poolings).

    Based on: Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015
    (arXiv:1505.04597); MONAI ``monai.networks.nets.BasicUNet``.

    Args:
        in_channels: input channels.
        out_channels: output classes (logits).
        img_size: input size, each side divisible by 16.
        features: channels of the five encoder levels and of the last decoder level.
        attention: must be ``"cnn"``.
        kwargs: further ``BasicUNet`` arguments (``act``, ``norm``, ``dropout``, ...).

    Raises:
        ValueError: if ``attention`` is not ``"cnn"`` or ``img_size`` is not divisible by 16.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        attention: str = "cnn",
        **kwargs: Any,
    ) -> None:
        if attention != "cnn":
            raise ValueError(f"the CNN reference has no attention; attention must be 'cnn', got {attention!r}.")
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != 2 or any(s % 16 for s in sizes):
            raise ValueError(f"img_size must be two sides divisible by 16 (four 2x poolings), got {img_size}.")
        super().__init__(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=features,
                         **kwargs)  # fmt: skip
        self.attention = attention
