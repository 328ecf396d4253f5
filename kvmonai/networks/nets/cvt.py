"""CvT-13 encoder with a U-shaped MONAI decoder for segmentation, with QKV, KV or KV+Pos convolutional attention.

The encoder follows the reference CvT (github.com/microsoft/CvT, ``lib/models/cls_cvt.py``): three stages, each a
convolutional token embedding (overlapping strided convolution + LayerNorm) and pre-norm transformer blocks whose
attention projects queries, keys and values with a depthwise 3x3 convolution + BatchNorm followed by a Linear layer
("dw_bn"), queries at stride 1 and keys/values at stride 2. No position embedding. The classification-only pieces
are dropped: the class token of stage 3 (segmentation needs every token on the grid; without it the stage-3
attention is the same as in stages 1-2) and the classifier head; the final LayerNorm is kept on the stage-3 map.
With 3 input channels the encoder (stages + final norm) has 19,612,096 parameters with QKV attention, the count of
the reference CvT-13 (19,997,480) minus its 1000-class head (385,000) and class token (384).

Key-value (KV) attention and CvT's strided keys: CvT computes K and V at stride 2 while Q is at stride 1, so Borji's
"Q := K" is not defined as is. ``kv_mode`` selects how (see ``docs/cvt_kv.md`` for the measured comparison):

* ``"shared_stride1"`` (default): the key path (depthwise conv + BN + Linear) is evaluated at stride 1 and gives
  the queries; the keys are its stride-2 subsample (identical to the strided key convolution, since a stride-2
  convolution with "same" padding samples the stride-1 output at even positions). Logits ``K_full K_down^T`` are
  ``n x n/4``; the block of the key positions is symmetric. Same token counts and attention cost as QKV.
* ``"full_res"``: keys and values at stride 1, ``Q := K``: symmetric ``n x n`` logits as in Borji's KV; four
  times the attention MACs of QKV in every stage.
* ``"down_up"``: ``Q := K`` at stride 2, attention over the ``n/4`` strided tokens only (symmetric), output
  projection at stride 2 and bilinear upsampling back to the ``n`` tokens; the cheapest option.

All three remove the query path (depthwise conv ``9 d``, BatchNorm ``2 d`` and Linear ``d^2 + d`` parameters per
attention layer). KV+Pos adds Borji's positional correction (learned temperature and per-key bias of the
``(query index, key index)`` sinusoidal encoding, ``m + 1`` parameters per layer) in its exact factorised form.
At the ``"paper"`` preset (224 x 224, 3 channels, 3 classes) QKV has 21,208,531 parameters and 6.97 GMACs; every KV
mode has 19,604,691 parameters (-7.6 %), with 6.88 (``shared_stride1``), 8.68 (``full_res``) and 5.95 (``down_up``)
GMACs. ``shared_stride1`` is the default because it changes nothing but the query projection, so a QKV-vs-KV
comparison isolates Q := K; ``down_up`` is the option for efficiency (its savings come from the reduced attention
resolution). The logit scale keeps the reference's ``dim ** -0.5`` (full stage width) by default (``attn_scale``).

Measured on the 2-core development CPU (torch 2.13, float32, 3 input channels, 3 classes; command
``.venv/bin/python scripts/cvt_kv.py timing``): one training step (forward, backward, Adam update) of the
``"small"`` preset (0.99 M parameters with QKV) at 128 x 128 with batch 8 takes 0.25 s with one thread on the shared
machine (about 0.15 s with two threads when it was otherwise idle); a forward pass of the ``"tiny"`` preset (batch
1, 1 channel) takes about 1.7 ms at 32 x 32 and 2.5 ms at 64 x 64. The design study is in ``docs/cvt_kv.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.layers import DropPath
from monai.utils import ensure_tuple_rep
from torch import nn

from kvmonai.networks.blocks.kv_attention import (
    ATTENTION_VARIANTS,
    append_key_bias,
    positional_frequencies,
    positional_split,
    sincos_embedding,
)

__all__ = [
    "ATTN_SCALES",
    "KV_MODES",
    "PRESETS",
    "CvTAttention",
    "CvTBlock",
    "CvTStage",
    "CvTUNet",
    "key_position_bias",
]

#: how key-value attention treats CvT's stride-2 keys/values (see the module docstring)
KV_MODES: tuple[str, ...] = ("shared_stride1", "full_res", "down_up")
#: attention logit scale: ``"dim"`` = ``dim ** -0.5`` as in the reference CvT, ``"head"`` = ``head_dim ** -0.5``
ATTN_SCALES: tuple[str, ...] = ("dim", "head")

#: constructor arguments (beyond ``in_channels``, ``out_channels``, ``img_size`` and ``attention``) of each preset
PRESETS: dict[str, dict[str, Any]] = {
    # CvT-13 (``cvt-13-224x224.yaml``) + U-shaped decoder, 224 x 224
    "paper": {
        "embed_dims": (64, 192, 384),
        "depths": (1, 2, 10),
        "num_heads": (1, 3, 6),
        "mlp_ratio": 4.0,
        "drop_path_rates": (0.0, 0.0, 0.1),
        "decoder_channels": (32, 16),
    },
    # same shape (3 stages, 1/4 - 1/8 - 1/16, growing heads, deepest last stage), CPU-sized
    "small": {
        "embed_dims": (32, 64, 128),
        "depths": (1, 1, 3),
        "num_heads": (1, 2, 4),
        "mlp_ratio": 4.0,
        "drop_path_rates": (0.0, 0.0, 0.0),
        "decoder_channels": (16, 16),
    },
    # for unit tests: milliseconds per forward pass at 32 x 32
    "tiny": {
        "embed_dims": (8, 16, 24),
        "depths": (1, 1, 1),
        "num_heads": (1, 2, 3),
        "mlp_ratio": 2.0,
        "drop_path_rates": (0.0, 0.0, 0.0),
        "decoder_channels": (8, 8),
    },
}


def key_position_bias(weight: torch.Tensor, bias: torch.Tensor, num_keys: int, pos_channels: int) -> torch.Tensor:
    """Per-key logit bias ``g(j) + b`` of KV+Pos for ``num_keys`` keys, shape ``(num_keys,)``.

    Borji's correction collapses ``S[i, j] + P[i, j, c]`` over the ``m = pos_channels`` channels with one
    ``Linear(m, 1)`` (``weight`` ``(1, m)``, ``bias`` ``(1,)``). The channels of ``P`` that depend on the key index
    ``j`` give this bias (the query-index channels are constant along each softmax row); it equals
    ``borji_positional_encoding(n, m)[i, :num_keys, q:] @ weight[0, q:] + bias`` for any row ``i``, with
    ``q = positional_split(m)[0]``, but costs O(num_keys * m) and allows a different number of queries and keys.

    Args:
        weight: the ``Linear(m, 1)`` weight, shape ``(1, m)``.
        bias: its bias, shape ``(1,)``.
        num_keys: number of keys ``n_k``.
        pos_channels: ``m``.

    Returns:
        tensor of shape ``(num_keys,)`` with ``weight``'s dtype and device.

    Raises:
        ValueError: if ``num_keys`` or ``pos_channels`` is smaller than 1.
    """
    if num_keys < 1:
        raise ValueError(f"num_keys must be >= 1, got {num_keys}.")
    return _key_position_bias(weight, bias, num_keys, pos_channels)


def _key_position_bias(weight: torch.Tensor, bias: torch.Tensor, num_keys: int, pos_channels: int) -> torch.Tensor:
    """:func:`key_position_bias` without argument checks (``num_keys`` may be a traced size)."""
    query_channels, key_channels = positional_split(pos_channels)
    inv_freq = positional_frequencies(pos_channels).to(weight.device)
    positions = torch.arange(num_keys, device=weight.device, dtype=torch.float64)
    emb = sincos_embedding(positions, inv_freq)[:, :key_channels].to(weight.dtype)
    return emb @ weight[0, query_channels:] + bias


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
    learned per-key bias (:func:`key_position_bias`), initialised to plain KV, like
    :class:`~kvmonai.networks.blocks.KVSelfAttention`. Attention runs through
    :func:`torch.nn.functional.scaled_dot_product_attention`.

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
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {attention!r}.")
        if kv_mode not in KV_MODES:
            raise ValueError(f"kv_mode must be one of {KV_MODES}, got {kv_mode!r}.")
        if attn_scale not in ATTN_SCALES:
            raise ValueError(f"attn_scale must be one of {ATTN_SCALES}, got {attn_scale!r}.")
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
        self.pos_proj: Optional[nn.Linear] = None  # noqa: UP045
        if attention == "kvpos":
            query_channels, _ = positional_split(pos_channels)
            self.pos_proj = nn.Linear(pos_channels, 1)
            with torch.no_grad():  # start as plain KV: temperature sum(w) = 1, key bias 0
                self.pos_proj.weight.zero_()
                self.pos_proj.weight[0, :query_channels] = 1.0 / query_channels
                self.pos_proj.bias.zero_()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, heads, n, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.dim_head).transpose(1, 2)

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
        head = v.shape[-1]
        mask: Optional[torch.Tensor] = None  # noqa: UP045
        if self.pos_proj is not None:
            q = q * self.pos_proj.weight.sum().to(q.dtype)
            bias = _key_position_bias(self.pos_proj.weight, self.pos_proj.bias, k.shape[2], self.pos_channels)
            if self.training:  # extra head channels keep SDPA's fused kernels in the backward (append_key_bias)
                q, k, v = append_key_bias(q, k, v, bias / self.scale)
            else:  # eval: a mask that needs no gradient costs nothing extra
                mask = bias.to(q.dtype).view(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_rate if self.training else 0.0, scale=self.scale
        )[..., :head]
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
        qkv_bias: bias of the q/k/v Linear layers.
        dropout_rate: dropout of the attention and MLP.
        drop_path: stochastic-depth probability of both residual branches.
        kernel_size: kernel of the depthwise projections.
        stride_kv: stride of the key/value projections.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        kv_mode: see :class:`CvTAttention`.
        pos_channels: channels ``m`` of the KV+Pos correction.
        attn_scale: ``"dim"`` or ``"head"``.

    Raises:
        ValueError: for invalid attention arguments (see :class:`CvTAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        drop_path: float = 0.0,
        kernel_size: int = 3,
        stride_kv: int = 2,
        attention: str = "qkv",
        kv_mode: str = "shared_stride1",
        pos_channels: int = 50,
        attn_scale: str = "dim",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CvTAttention(
            dim, num_heads, qkv_bias, dropout_rate, kernel_size, stride_kv, attention, kv_mode, pos_channels, attn_scale
        )
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


class CvTUNet(nn.Module):
    """CvT encoder (CvT-13 by default) with a U-shaped MONAI decoder; QKV, KV or KV+Pos attention.

    Encoder: three :class:`CvTStage` at 1/4, 1/8 and 1/16 resolution (CvT-13: 64, 192, 384 channels), LayerNorm on
    the last map. Decoder (UNETR / SwinUNETR style, MONAI blocks): two convolutional image skips at full and 1/2
    resolution (``UnetrBasicBlock`` residual blocks, widths ``decoder_channels[1]`` and ``decoder_channels[0]``);
    four ``UnetrUpBlock`` (transposed convolution, concatenation, residual block): 1/16 -> 1/8 (stage-2 skip),
    1/8 -> 1/4 (stage-1 skip), 1/4 -> 1/2 and 1/2 -> 1/1 (image skips); ``UnetOutBlock`` 1x1 convolution to the
    logits.

    Based on: Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021, arXiv:2103.15808
    (reference code github.com/microsoft/CvT); Hatamizadeh et al., "UNETR", WACV 2022 (decoder blocks); attention
    variants: Borji, "Key-Value Transformer", arXiv:2305.19129, and Hwa et al., BVM 2025, arXiv:2503.18862.

    Example::

        >>> from kvmonai.networks.nets.cvt import PRESETS, CvTUNet
        >>> net = CvTUNet(in_channels=1, out_channels=3, img_size=224, attention="kv", **PRESETS["paper"])

    Args:
        in_channels: input channels (1 for single MRI slices, e.g. 3 or 5 for 2.5D stacks of adjacent slices).
        out_channels: number of output logits per pixel (classes).
        img_size: input size ``(H, W)`` or one int; each side must be a multiple of ``prod(patch_strides)`` (16) and
            every stage must then reduce it exactly by its stride.
        embed_dims: channels of the three stages.
        depths: blocks of the three stages.
        num_heads: attention heads of the three stages.
        patch_sizes: kernels of the three token-embedding convolutions.
        patch_strides: their strides; the first must be 4 (the decoder adds the 1/2 and full-resolution levels).
        patch_paddings: their paddings.
        mlp_ratio: MLP hidden width relative to the stage width.
        qkv_bias: bias of the q/k/v Linear layers.
        dropout_rate: dropout in attention and MLPs (CvT-13: 0).
        drop_path_rates: maximum stochastic-depth probability per stage, linearly increasing over the stage's
            blocks from 0 (CvT-13: ``(0, 0, 0.1)``).
        kernel_size_qkv: kernel of the depthwise q/k/v projections.
        stride_kv: stride of the key/value projections (CvT: 2).
        attn_scale: ``"dim"`` (reference CvT: ``dim ** -0.5``) or ``"head"`` (``head_dim ** -0.5``).
        decoder_channels: widths of the decoder at 1/2 and full resolution (and of the image skips there).
        norm_name: normalisation of the decoder blocks (MONAI name, e.g. ``"instance"``, ``"batch"``).
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        kv_mode: how KV attention handles the stride-2 keys: ``"shared_stride1"``, ``"full_res"`` or ``"down_up"``
            (ignored for ``"qkv"``).
        pos_channels: channels ``m`` of the KV+Pos correction (Borji: 50).

    Raises:
        ValueError: if ``attention``, ``kv_mode`` or ``attn_scale`` is not one of its allowed values.
        ValueError: if ``in_channels`` or ``out_channels`` is not positive.
        ValueError: if a per-stage argument does not have three entries, or ``embed_dims`` is not divisible by
            ``num_heads``.
        ValueError: if ``patch_strides[0] != 4`` or ``img_size`` is not reduced exactly by each stage's stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: int | Sequence[int],
        embed_dims: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        patch_paddings: Sequence[int] = (2, 1, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        drop_path_rates: Sequence[float] = (0.0, 0.0, 0.1),
        kernel_size_qkv: int = 3,
        stride_kv: int = 2,
        attn_scale: str = "dim",
        decoder_channels: Sequence[int] = (32, 16),
        norm_name: str | tuple = "instance",
        attention: str = "qkv",
        kv_mode: str = "shared_stride1",
        pos_channels: int = 50,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {attention!r}.")
        if kv_mode not in KV_MODES:
            raise ValueError(f"kv_mode must be one of {KV_MODES}, got {kv_mode!r}.")
        if attn_scale not in ATTN_SCALES:
            raise ValueError(f"attn_scale must be one of {ATTN_SCALES}, got {attn_scale!r}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}.")
        per_stage = {
            "embed_dims": embed_dims,
            "depths": depths,
            "num_heads": num_heads,
            "patch_sizes": patch_sizes,
            "patch_strides": patch_strides,
            "patch_paddings": patch_paddings,
            "drop_path_rates": drop_path_rates,
        }
        for name, value in per_stage.items():
            if len(value) != 3:
                raise ValueError(f"{name} must have one entry per stage (3), got {tuple(value)}.")
        for d, nh in zip(embed_dims, num_heads, strict=True):
            if d < 1 or nh < 1 or d % nh != 0:
                raise ValueError(f"embed_dims {tuple(embed_dims)} must be positive multiples of num_heads {num_heads}.")
        if min(depths) < 1:
            raise ValueError(f"depths must be positive, got {tuple(depths)}.")
        if any(not 0.0 <= r <= 1.0 for r in drop_path_rates):
            raise ValueError(f"drop_path_rates must be in [0, 1], got {tuple(drop_path_rates)}.")
        if patch_strides[0] != 4:
            raise ValueError(f"patch_strides[0] must be 4 (stage 1 at 1/4 resolution), got {patch_strides[0]}.")
        if len(decoder_channels) != 2 or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be two positive widths (1/2, 1/1), got {tuple(decoder_channels)}.")
        size = tuple(int(s) for s in ensure_tuple_rep(img_size, 2))
        total_stride = math.prod(patch_strides)
        sides = list(size)
        for k, s, p in zip(patch_sizes, patch_strides, patch_paddings, strict=True):
            out = [(side + 2 * p - k) // s + 1 for side in sides]
            if any(side % s != 0 or o != side // s for side, o in zip(sides, out, strict=True)):
                raise ValueError(
                    f"img_size {size} must be a multiple of {total_stride} that every token embedding "
                    f"(kernel {k}, stride {s}, padding {p}) divides exactly by its stride."
                )
            sides = out

        self.attention = attention
        self.kv_mode = kv_mode
        self.img_size = size
        dims = [int(d) for d in embed_dims]
        stages = []
        cin = in_channels
        for i in range(3):
            rates = [float(drop_path_rates[i]) * j / max(int(depths[i]) - 1, 1) for j in range(int(depths[i]))]
            stages.append(
                CvTStage(
                    cin,
                    dims[i],
                    int(depths[i]),
                    int(num_heads[i]),
                    int(patch_sizes[i]),
                    int(patch_strides[i]),
                    int(patch_paddings[i]),
                    rates,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    dropout_rate=dropout_rate,
                    kernel_size=kernel_size_qkv,
                    stride_kv=stride_kv,
                    attention=attention,
                    kv_mode=kv_mode,
                    pos_channels=pos_channels,
                    attn_scale=attn_scale,
                )
            )
            cin = dims[i]
        self.stage1, self.stage2, self.stage3 = stages
        self.norm = nn.LayerNorm(dims[2])
        self._init_encoder()

        half, full = int(decoder_channels[0]), int(decoder_channels[1])
        self.skip_full = UnetrBasicBlock(2, in_channels, full, 3, 1, norm_name, res_block=True)
        self.skip_half = UnetrBasicBlock(2, full, half, 3, 2, norm_name, res_block=True)
        self.up3 = UnetrUpBlock(2, dims[2], dims[1], 3, int(patch_strides[2]), norm_name, res_block=True)
        self.up2 = UnetrUpBlock(2, dims[1], dims[0], 3, int(patch_strides[1]), norm_name, res_block=True)
        self.up1 = UnetrUpBlock(2, dims[0], half, 3, 2, norm_name, res_block=True)
        self.up0 = UnetrUpBlock(2, half, full, 3, 2, norm_name, res_block=True)
        self.out = UnetOutBlock(2, full, out_channels)

    def _init_encoder(self) -> None:
        """Reference CvT initialisation of the encoder: trunc-normal (0.02) Linear weights, zero biases, unit norms.

        The KV+Pos ``pos_proj`` layers keep their plain-KV initialisation.
        """
        keep = {id(m.pos_proj) for m in self.modules() if isinstance(m, CvTAttention) and m.pos_proj is not None}
        for m in [*self.stage1.modules(), *self.stage2.modules(), *self.stage3.modules(), self.norm]:
            if isinstance(m, nn.Linear) and id(m) not in keep:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three stage maps ``[1/4, 1/8, 1/16]`` (the last one layer-normalised)."""
        s4 = self.stage1(x)
        s8 = self.stage2(s4)
        s16 = self.stage3(s8)
        s16 = self.norm(s16.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return [s4, s8, s16]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images ``(B, in_channels, H, W)``; each side a multiple of 16.

        Returns:
            logits ``(B, out_channels, H, W)``.
        """
        s4, s8, s16 = self.encode(x)
        full = self.skip_full(x)
        half = self.skip_half(full)
        y = self.up3(s16, s8)
        y = self.up2(y, s4)
        y = self.up1(y, half)
        y = self.up0(y, full)
        return self.out(y)
