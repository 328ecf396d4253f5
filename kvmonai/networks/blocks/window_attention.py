"""Swin window attention with a selectable QKV or KV variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

from kvmonai.networks.blocks.kv_attention import routed_sdpa, split_fused
from kvmonai.utils import check_option

__all__ = ["WINDOW_ATTENTION_VARIANTS", "WINDOW_KVPOS_NOTE", "KVWindowAttention"]

#: variants of window attention; KV+Pos is not defined for shifted windows (see :class:`KVWindowAttention`)
WINDOW_ATTENTION_VARIANTS: tuple[str, ...] = ("qkv", "kv")
#: why window attention has no KV+Pos (appended to the error for ``"kvpos"``)
WINDOW_KVPOS_NOTE = (
    "Its relative position bias is kept in both variants, and KV+Pos's 1D token-index encoding does not apply to "
    "shifted windows."
)


class KVWindowAttention(WindowAttention):
    """MONAI's Swin ``WindowAttention`` with Borji's KV variant and ``scaled_dot_product_attention`` everywhere.

    ``"qkv"`` keeps MONAI's parameters (``qkv``, ``proj``, ``relative_position_bias_table``). ``"kv"`` replaces the
    ``qkv`` projection by ``kv = Linear(dim, 2 dim)`` and uses the keys on both sides, so the window logits are
    ``K K^T / sqrt(d_h)``; the learned relative position bias and the shifted-window mask are kept and added to the
    logits in both variants (the KV logits are then no longer symmetric). Borji's KV+Pos correction indexes the
    1D token sequence and has no meaning inside shifted windows, which already carry a 2D relative position bias, so
    it is not offered here.

    Unlike MONAI's class, attention always runs through ``scaled_dot_product_attention`` (with the bias as additive
    mask), in training too.

    Based on: Liu et al., "Swin Transformer", ICCV 2021 (arXiv:2103.14030); Borji, "Key-Value Transformer",
    arXiv:2305.19129.

    Args:
        dim: number of feature channels.
        num_heads: number of attention heads.
        window_size: local window size.
        qkv_bias: bias of the input projection.
        attn_drop: attention dropout rate.
        proj_drop: output dropout rate.
        use_flash_attention: accepted for compatibility; SDPA is always used.
        attention: ``"qkv"`` (default, like ``kvmonai.networks.create``: MONAI's window attention) or ``"kv"``.

    Raises:
        ValueError: if ``attention`` is not one of :data:`WINDOW_ATTENTION_VARIANTS`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_flash_attention: bool = False,
        attention: str = "qkv",
    ) -> None:
        check_option("attention", attention, WINDOW_ATTENTION_VARIANTS, WINDOW_KVPOS_NOTE)
        super().__init__(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop, use_flash_attention)
        self.attention = attention
        self.head_dim = dim // num_heads
        self.attn_drop_rate = float(attn_drop)
        self.kv: nn.Linear | nn.Identity = nn.Identity()
        if attention == "kv":
            self.qkv = nn.Identity()
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: window tokens ``(B * num_windows, n, C)``.
            mask: shifted-window mask ``(num_windows, n, n)`` (0 or -100) or None.
        """
        b, n, c = x.shape
        if self.attention == "qkv":
            q, k, v = split_fused(self.qkv(x), 3, self.num_heads, self.head_dim).unbind(0)
        else:
            k, v = split_fused(self.kv(x), 2, self.num_heads, self.head_dim).unbind(0)
            q = k
        index = self.relative_position_index.clone()[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.reshape(1, nw, 1, n, n)).expand(b // nw, nw, self.num_heads, n, n)
            bias = bias.reshape(b, self.num_heads, n, n)
        dropout = self.attn_drop_rate if self.training else 0.0
        out = routed_sdpa(q, k, v, self.scale, dropout_p=dropout, mask=bias.to(q.dtype))
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
