"""MONAI's SwinUNETR (2D) with its window attention swapped for the QKV or KV variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import SwinUNETR

from kvmonai.networks.blocks import WINDOW_ATTENTION_VARIANTS, WINDOW_KVPOS_NOTE, swap_attention
from kvmonai.utils import check_option

__all__ = ["PRESETS", "KVSwinUNETR"]

#: constructor arguments of each preset (beyond in/out channels, img_size and attention)
PRESETS: dict[str, dict[str, Any]] = {
    # Swin-T-like encoder as in MONAI's BTCV bundle: feature size 48, depths 2-2-2-2, window 7
    "paper": {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
    "small": {"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 4},
    "tiny": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 2},
}


class KVSwinUNETR(SwinUNETR):
    """MONAI ``SwinUNETR`` in 2D whose window attention is :class:`~kvmonai.networks.blocks.KVWindowAttention`.

    The network is MONAI's; after MONAI builds it every ``WindowAttention`` is replaced by the chosen variant
    (``swap_attention``). The learned relative position bias of each window is kept in both variants. KV+Pos is not
    offered: its 1D token-index encoding has no meaning inside shifted windows.

    Based on: Hatamizadeh et al., "Swin UNETR", BrainLes 2021 (arXiv:2201.01266).

    Args:
        in_channels: input channels.
        out_channels: output classes (logits).
        img_size: input size; each side divisible by 32. Used for validation only (SwinUNETR adapts to any such
            size); bundles pass it to document the trained size.
        feature_size: embedding size (divisible by 12).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: local window size.
        attention: ``"qkv"`` or ``"kv"``.
        kwargs: further ``monai.networks.nets.SwinUNETR`` arguments.

    Raises:
        ValueError: if ``attention`` is not ``"qkv"`` or ``"kv"``, or ``img_size`` is not divisible by 32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        attention: str = "qkv",
        **kwargs: Any,
    ) -> None:
        check_option("attention", attention, WINDOW_ATTENTION_VARIANTS, WINDOW_KVPOS_NOTE)
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != 2 or any(s % 32 for s in sizes):
            raise ValueError(f"img_size must be two sides divisible by 32 (SwinUNETR's 5 halvings), got {img_size}.")
        super().__init__(
            in_channels,
            out_channels,
            feature_size=feature_size,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            spatial_dims=2,
            **kwargs,
        )
        self.attention = attention
        self.img_size = sizes
        swap_attention(self, attention)
