"""MONAI's UNETR (2D) with the self-attention of its ViT encoder swapped for a selectable variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import UNETR

from kvmonai.networks.blocks import ATTENTION_VARIANTS, swap_attention
from kvmonai.utils import check_option

__all__ = ["PRESETS", "KVUNETR"]

#: constructor arguments of each preset (beyond in/out channels, img_size and attention)
PRESETS: dict[str, dict[str, Any]] = {
    # ViT-B/16 encoder (12 layers, MONAI's fixed depth), feature_size 16 as in the UNETR paper
    "paper": {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
    "small": {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 3},
    "tiny": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
}


class KVUNETR(UNETR):
    """MONAI ``UNETR`` in 2D whose 12 ViT attention layers are :class:`~kvmonai.networks.blocks.KVSelfAttention`.

    The network is MONAI's, unchanged; after MONAI builds it, every ``SABlock`` of ``self.vit`` is replaced by the
    chosen variant (``swap_attention``), keeping the freshly initialised K, V and output weights. MONAI fixes the
    patch size to 16 and the depth to 12 layers.

    Based on: Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022
    (arXiv:2103.10497).

    Args:
        in_channels: input channels.
        out_channels: output classes (logits).
        img_size: input size, each side divisible by 16.
        feature_size: channels of the convolutional decoder.
        hidden_size: token dimension.
        mlp_dim: MLP hidden dimension.
        num_heads: attention heads.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction.
        qkv_bias: bias of the attention projections (MONAI's default is False; ViT-B uses True).
        kwargs: further ``monai.networks.nets.UNETR`` arguments (``norm_name``, ``dropout_rate``, ...).

    Raises:
        ValueError: if ``attention`` is unknown or ``img_size`` is not divisible by 16.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        attention: str = "qkv",
        pos_channels: int = 50,
        qkv_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        check_option("attention", attention, ATTENTION_VARIANTS)
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != 2 or any(s % 16 for s in sizes):
            raise ValueError(f"img_size must be two sides divisible by 16 (UNETR's patch size), got {img_size}.")
        super().__init__(
            in_channels,
            out_channels,
            sizes,
            feature_size=feature_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            spatial_dims=2,
            qkv_bias=qkv_bias,
            **kwargs,
        )
        self.attention = attention
        swap_attention(self.vit, attention, pos_channels)
