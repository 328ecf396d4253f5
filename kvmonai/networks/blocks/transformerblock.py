"""MONAI's pre-norm ``TransformerBlock`` with a selectable attention variant."""

from __future__ import annotations

from monai.networks.blocks import TransformerBlock
from torch import nn

from kvmonai.networks.blocks.kv_attention import KVSelfAttention

__all__ = ["KVTransformerBlock"]


class KVTransformerBlock(TransformerBlock):
    """MONAI ``TransformerBlock`` whose self-attention is a :class:`KVSelfAttention` of the chosen variant.

    MONAI hard-codes ``SABlock`` inside ``TransformerBlock``, so this subclass replaces ``self.attn`` after the parent
    constructor. It also replaces the cross-attention ``LayerNorm`` that MONAI allocates even without cross
    attention (``2 * hidden_size`` parameters that never receive a gradient) by ``nn.Identity``, so parameter counts
    match the reference architectures exactly. ``forward`` is MONAI's.

    Based on: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, and Borji, "Key-Value Transformer",
    arXiv:2305.19129.

    Args:
        hidden_size: dimension of the hidden layer.
        mlp_dim: dimension of the feed-forward layer.
        num_heads: number of attention heads.
        dropout_rate: dropout of the attention and MLP, in ``[0, 1]``.
        qkv_bias: bias of the attention input projections.
        save_attn: keep the last attention map in ``self.attn.att_mat``.
        causal: causal attention (needs ``sequence_length``).
        sequence_length: maximum sequence length for ``causal``.
        with_cross_attention: add MONAI's cross-attention sub-block.
        use_flash_attention: accepted for compatibility; attention always uses ``scaled_dot_product_attention``.
        include_fc: include the attention output projection.
        use_combined_linear: fused input projection.
        attention: ``"qkv"`` (default, like ``kvmonai.networks.create``), ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction.
        layer_norm_eps: epsilon of the two pre-norm ``LayerNorm`` layers (MONAI: 1e-5; ViT/TransUNet: 1e-6).
        attention_dropout_rate: dropout of the attention weights and output when it differs from the MLP's
            ``dropout_rate`` (TransUNet: 0.0 with an MLP dropout of 0.1); ``None`` uses ``dropout_rate``.

    Raises:
        ValueError: for invalid attention arguments (see :class:`KVSelfAttention`).
    """

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        save_attn: bool = False,
        causal: bool = False,
        sequence_length: int | None = None,
        with_cross_attention: bool = False,
        use_flash_attention: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = True,
        attention: str = "qkv",
        pos_channels: int = 50,
        layer_norm_eps: float = 1e-5,
        attention_dropout_rate: float | None = None,
    ) -> None:
        # validate the attention arguments before the parent builds anything
        attn = KVSelfAttention(
            hidden_size,
            num_heads,
            dropout_rate if attention_dropout_rate is None else attention_dropout_rate,
            qkv_bias=qkv_bias,
            save_attn=save_attn,
            causal=causal,
            sequence_length=sequence_length,
            include_fc=include_fc,
            use_combined_linear=use_combined_linear,
            use_flash_attention=use_flash_attention,
            attention=attention,
            pos_channels=pos_channels,
        )
        super().__init__(
            hidden_size,
            mlp_dim,
            num_heads,
            dropout_rate,
            qkv_bias=qkv_bias,
            causal=causal,
            sequence_length=sequence_length,
            with_cross_attention=with_cross_attention,
            include_fc=include_fc,
            use_combined_linear=use_combined_linear,
        )
        self.attn = attn
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        if not with_cross_attention:
            self.norm_cross_attn = nn.Identity()
