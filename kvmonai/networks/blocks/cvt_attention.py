"""CvT's convolutional-projection attention, its pre-norm transformer block and its stage, with QKV, KV or KV+Pos.

How key-value attention meets CvT's stride-2 keys (``kv_mode``) is explained in :mod:`kvmonai.networks.nets.cvt`
and measured in ``docs/cvt_kv.md``. The KV+Pos correction and the SDPA routing are the ones of
:mod:`kvmonai.networks.blocks.kv_attention`.

References:
    H. Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021, arXiv:2103.15808.
    A. Borji, "Key-Value Transformer", arXiv:2305.19129, 2023.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock
from monai.networks.layers import DropPath
from torch import nn

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, KVPositionCorrection, routed_sdpa
from kvmonai.utils import check_option

__all__ = ["ATTN_SCALES", "KV_MODES", "CvTAttention", "CvTBlock", "CvTStage"]

#: how key-value attention treats CvT's stride-2 keys/values (see :mod:`kvmonai.networks.nets.cvt`)
KV_MODES: tuple[str, ...] = ("shared_stride1", "full_res", "down_up")
#: attention logit scale: ``"dim"`` = ``dim ** -0.5`` as in the reference CvT, ``"head"`` = ``head_dim ** -0.5``
ATTN_SCALES: tuple[str, ...] = ("dim", "head")


def _dw_bn(channels: int, kernel_size: int, stride: int) -> Convolution:
    """CvT's "dw_bn" projection: depthwise convolution (no bias) + BatchNorm."""
    return Convolution(
        2,
        channels,
        channels,
        strides=stride,
        kernel_size=kernel_size,
        groups=channels,
        bias=False,
        act=None,
        norm="batch",
    )


class CvTAttention(nn.Module):
    """CvT's convolutional-projection multi-head attention with QKV, KV or KV+Pos variants.

    QKV (reference): ``q = Linear(dw_bn_q(x))`` at stride ``stride_q = 1``, ``k = Linear(dw_bn_k(x))`` and
    ``v = Linear(dw_bn_v(x))`` at stride ``stride_kv``; ``softmax(q k^T * scale) v``; output Linear. KV drops
    ``dw_bn_q`` and the query Linear; ``kv_mode`` decides how the stride-2 keys are matched (module docstring of
    :mod:`kvmonai.networks.nets.cvt`). KV+Pos additionally scales the queries by a learned temperature and adds a
    learned per-key bias: the :class:`~kvmonai.networks.blocks.KVPositionCorrection` that
    :class:`~kvmonai.networks.blocks.KVSelfAttention` uses too, initialised to plain KV. Attention runs through
    :func:`~kvmonai.networks.blocks.routed_sdpa`, the SDPA call shared by every kvmonai attention layer.

    Based on: Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021, arXiv:2103.15808, and
    Borji, "Key-Value Transformer", arXiv:2305.19129.

    Args:
        dim: token channels.
        num_heads: attention heads.
        qkv_bias: bias of the q/k/v Linear layers.
        dropout_rate: dropout on the attention weights and on the output.
        kernel_size: kernel of the depthwise projections (odd).
        stride_kv: stride of the key/value projections (CvT: 2).
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        kv_mode: ``"shared_stride1"``, ``"full_res"`` or ``"down_up"``; ignored for ``"qkv"``.
        pos_channels: channels ``m`` of the KV+Pos correction.
        attn_scale: ``"dim"`` (``dim ** -0.5``, the reference CvT) or ``"head"`` (``head_dim ** -0.5``).

    Raises:
        ValueError: for an unknown ``attention``, ``kv_mode`` or ``attn_scale``, ``dim`` not divisible by
            ``num_heads``, an even ``kernel_size``, ``stride_kv < 1`` or a dropout rate outside ``[0, 1]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        kernel_size: int = 3,
        stride_kv: int = 2,
        attention: str = "qkv",
        kv_mode: str = "shared_stride1",
        pos_channels: int = 50,
        attn_scale: str = "dim",
    ) -> None:
        super().__init__()
        check_option("attention", attention, ATTENTION_VARIANTS)
        check_option("kv_mode", kv_mode, KV_MODES)
        check_option("attn_scale", attn_scale, ATTN_SCALES)
        if dim < 1 or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads}).")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}.")
        if stride_kv < 1:
            raise ValueError(f"stride_kv must be >= 1, got {stride_kv}.")
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        self.attention = attention
        self.kv_mode = kv_mode if attention != "qkv" else "qkv"
        self.num_heads = num_heads
        self.dim_head = dim // num_heads
        self.scale = (dim if attn_scale == "dim" else self.dim_head) ** -0.5
        self.stride_kv = stride_kv
        self.dropout_rate = dropout_rate

        # stride of the key path's convolution and of the value path
        conv_stride_k = 1 if self.kv_mode in ("shared_stride1", "full_res") else stride_kv
        conv_stride_v = 1 if self.kv_mode == "full_res" else stride_kv
        self.conv_proj_q: nn.Module = nn.Identity()
        self.proj_q: nn.Module = nn.Identity()
        if attention == "qkv":
            self.conv_proj_q = _dw_bn(dim, kernel_size, 1)
            self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.conv_proj_k = _dw_bn(dim, kernel_size, conv_stride_k)
        self.conv_proj_v = _dw_bn(dim, kernel_size, conv_stride_v)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout_rate)

        self.pos_channels = pos_channels if attention == "kvpos" else 0
        self.pos_proj = KVPositionCorrection(pos_channels) if attention == "kvpos" else None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, heads, n, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.dim_head).transpose(1, 2)

    def token_counts(self, h: int, w: int) -> tuple[int, int]:
        """Numbers of (queries, keys) that attention sees on an ``h x w`` token grid (for op counts)."""
        s = self.stride_kv
        strided = ((h + s - 1) // s) * ((w + s - 1) // s)
        if self.kv_mode == "full_res":
            return h * w, h * w
        if self.kv_mode == "down_up":
            return strided, strided
        return h * w, strided

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """
        Args:
            x: tokens ``(B, h * w, C)`` of an ``h x w`` grid (row-major).
            h: grid height.
            w: grid width.

        Returns:
            ``(B, h * w, C)``.
        """
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, h, w)
        s = self.stride_kv
        if self.kv_mode == "qkv":
            q = self.proj_q(self.conv_proj_q(grid).flatten(2).transpose(1, 2))
            k = self.proj_k(self.conv_proj_k(grid).flatten(2).transpose(1, 2))
        elif self.kv_mode == "shared_stride1":
            q = self.proj_k(self.conv_proj_k(grid).flatten(2).transpose(1, 2))
            # the stride-s key convolution equals the stride-1 one sampled every s pixels; the Linear is per token
            k = q.reshape(b, h, w, c)[:, ::s, ::s].reshape(b, -1, c)
        else:
            k = self.proj_k(self.conv_proj_k(grid).flatten(2).transpose(1, 2))
            q = k
        v_grid = self.conv_proj_v(grid)
        hv, wv = v_grid.shape[2], v_grid.shape[3]
        v = self.proj_v(v_grid.flatten(2).transpose(1, 2))

        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        key_bias: Optional[torch.Tensor] = None  # noqa: UP045
        if self.pos_proj is not None:
            q = q * self.pos_proj.temperature().to(q.dtype)
            key_bias = self.pos_proj.key_bias(k.shape[2])
        dropout = self.dropout_rate if self.training else 0.0
        out = routed_sdpa(q, k, v, self.scale, dropout_p=dropout, key_bias=key_bias, training=self.training)
        out = self.proj(out.transpose(1, 2).reshape(b, q.shape[2], c))
        if self.kv_mode == "down_up":
            # the output Linear commutes with bilinear interpolation, so it runs on the n/s^2 tokens
            out = out.transpose(1, 2).reshape(b, c, hv, wv)
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        return self.proj_drop(out)


class CvTBlock(nn.Module):
    """Pre-norm CvT transformer block: ``x + DropPath(attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    The MLP is MONAI's ``MLPBlock`` with GELU (the CvT repository's builder uses QuickGELU, its ``Mlp`` default is
    GELU; parameters are the same).

    Args:
        dim: token channels.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``dim``.
        dropout_rate: dropout of the attention and MLP.
        drop_path: stochastic-depth probability of both residual branches.
        attention_kwargs: further :class:`CvTAttention` arguments (``qkv_bias``, ``kernel_size``, ``stride_kv``,
            ``attention``, ``kv_mode``, ``pos_channels``, ``attn_scale``).

    Raises:
        ValueError: for invalid attention arguments (see :class:`CvTAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout_rate: float = 0.0,
        drop_path: float = 0.0,
        **attention_kwargs: Any,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CvTAttention(dim, num_heads, dropout_rate=dropout_rate, **attention_kwargs)
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), dropout_rate)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """One CvT stage: convolutional token embedding (strided conv + LayerNorm) and ``depth`` :class:`CvTBlock`.

    Args:
        in_channels: input channels of the feature map.
        dim: token channels.
        depth: number of blocks.
        num_heads: attention heads.
        patch_size: kernel of the embedding convolution.
        patch_stride: its stride.
        patch_padding: its padding.
        drop_paths: stochastic-depth probability of each block (length ``depth``).
        block_kwargs: further :class:`CvTBlock` arguments.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        patch_stride: int,
        patch_padding: int,
        drop_paths: Sequence[float],
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.embed = Convolution(
            2,
            in_channels,
            dim,
            strides=patch_stride,
            kernel_size=patch_size,
            padding=patch_padding,
            bias=True,
            conv_only=True,
        )
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            [CvTBlock(dim, num_heads, drop_path=drop_paths[i], **block_kwargs) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        t = self.embed_norm(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            t = block(t, h, w)
        return t.transpose(1, 2).reshape(b, c, h, w)
