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

The design study and its timings are in ``docs/cvt_kv.md``; the attention, block and stage live in
:mod:`kvmonai.networks.blocks.cvt_attention` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.utils import ensure_tuple_rep
from torch import nn

from kvmonai.networks.blocks.cvt_attention import ATTN_SCALES, KV_MODES, CvTAttention, CvTBlock, CvTStage
from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, key_position_bias
from kvmonai.utils import check_option

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
        """Checks every argument, then builds the layers in forward order; long on purpose (see "Constructors" in
        :mod:`kvmonai.networks.nets`)."""
        super().__init__()
        check_option("attention", attention, ATTENTION_VARIANTS)
        check_option("kv_mode", kv_mode, KV_MODES)
        check_option("attn_scale", attn_scale, ATTN_SCALES)
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
