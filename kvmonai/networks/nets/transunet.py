"""TransUNet (R50-ViT-B/16 hybrid) with a selectable attention variant: QKV, KV or KV+Pos.

The layout follows the reference implementation (github.com/Beckschen/TransUNet, ``networks/vit_seg_modeling.py``
and ``networks/vit_seg_modeling_resnet_skip.py``) parameter for parameter: with 3 input channels, 3 classes and
224 x 224 inputs the ``"paper"`` preset has exactly 105,276,211 parameters with QKV attention, 98,189,107 with KV
and 98,189,719 with KV+Pos (12 x 51 more). Built with random weights; the reference's ImageNet-21k R50+ViT-B/16
weights (Google's ``.npz``) load with :func:`kvmonai.networks.pretrained.load_pretrained` (a bundle's
``--pretrained``), the query projections dropped for KV.

Deliberate differences from the reference, none of which changes a parameter:

* the input is not repeated to 3 channels; the root convolution is built for ``in_channels`` (1-channel and 2.5D
  inputs);
* the stem max-pooling uses ``padding=1`` (the reference uses ``padding=0`` and zero-pads the 1/4 and 1/8 skip
  maps back to size), so every feature map is exactly 1/2, 1/4, 1/8, 1/16 of the input;
* learned position embeddings start from MONAI's truncated normal (std 0.02), not zeros;
* in the decoder MONAI's ``UpCat`` concatenates ``[skip, upsampled]`` (reference ``[upsampled, skip]``).

Measured on the 2-core development CPU (torch 2.13, float32, 3 input channels, 3 classes; command
``.venv/bin/python research/cvt_kv.py timing``): one training step (forward, backward, Adam update) of the
``"small"`` preset (3.30 M parameters with QKV) at 128 x 128 with batch 8 takes 0.29 s with one thread on the shared
machine (0.17 s with two threads when it was otherwise idle); a forward pass of the ``"tiny"`` preset (batch 1,
1 channel) takes about 1.2 ms at 32 x 32 and 1.8 ms at 64 x 64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, PatchEmbeddingBlock
from monai.networks.nets.basic_unet import UpCat
from monai.utils import ensure_tuple_rep
from torch import nn

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS
from kvmonai.networks.blocks.transformerblock import KVTransformerBlock
from kvmonai.utils import check_option

__all__ = ["PRESETS", "ResNetV2Bottleneck", "ResNetV2Encoder", "StdConv2d", "TransUNet"]

#: constructor arguments (beyond ``in_channels``, ``out_channels``, ``img_size`` and ``attention``) of each preset
PRESETS: dict[str, dict[str, Any]] = {
    # R50-ViT-B/16 exactly as in the reference (``get_r50_b16_config``), 224 x 224
    "paper": {
        "resnet_units": (3, 4, 9),
        "resnet_width": 64,
        "resnet_groups": 32,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_layers": 12,
        "num_heads": 12,
        "dropout_rate": 0.1,
        "head_channels": 512,
        "decoder_channels": (256, 128, 64, 16),
        "n_skip": 3,
    },
    # same shape (3-stage ResNetV2, pre-norm ViT, 4-block cascaded upsampler with 3 skips), CPU-sized
    "small": {
        "resnet_units": (1, 2, 2),
        "resnet_width": 32,
        "resnet_groups": 8,
        "hidden_size": 192,
        "mlp_dim": 768,
        "num_layers": 4,
        "num_heads": 3,
        "dropout_rate": 0.1,
        "head_channels": 128,
        "decoder_channels": (64, 32, 16, 16),
        "n_skip": 3,
    },
    # for unit tests: milliseconds per forward pass at 32 x 32
    "tiny": {
        "resnet_units": (1, 1, 1),
        "resnet_width": 8,
        "resnet_groups": 4,
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "dropout_rate": 0.0,
        "head_channels": 32,
        "decoder_channels": (16, 16, 8, 8),
        "n_skip": 3,
    },
}


class StdConv2d(nn.Conv2d):
    """``nn.Conv2d`` with weight standardisation: each output filter is normalised to zero mean and unit variance.

    Used by the ResNetV2 (BiT) backbone of TransUNet. Based on: Qiao et al., "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization", arXiv:1903.10520, and Kolesnikov et al., "Big Transfer (BiT)",
    ECCV 2020.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size.
        stride: stride.
        padding: zero padding.
        bias: whether the convolution has a bias.
        eps: added to the filter variance (the reference uses 1e-5).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, correction=0)
        return (self.weight - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def inference_module(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the standardised weights: the same function without the per-call
        standardisation (see :func:`kvmonai.inference.freeze_for_inference`)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
        ).to(self.weight.device, self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.standardized_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class ResNetV2Bottleneck(nn.Module):
    """Bottleneck unit of TransUNet's ResNetV2: 1x1, 3x3 (strided), 1x1 weight-standardised convolutions.

    As in the reference, each convolution is followed by ``GroupNorm`` (eps 1e-6), ReLU after the first two, and the
    sum with the (projected) shortcut goes through ReLU. The projection (1x1 strided convolution + per-channel
    ``GroupNorm(cout, cout)``) exists when the stride or channel count changes. No convolution has a bias.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mid_channels: bottleneck channels.
        stride: stride of the 3x3 convolution and of the projection.
        num_groups: groups of the ``GroupNorm`` layers after the three convolutions.
    """

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1, num_groups: int = 32
    ) -> None:
        super().__init__()
        self.conv1 = StdConv2d(in_channels, mid_channels, 1)
        self.gn1 = nn.GroupNorm(num_groups, mid_channels, eps=1e-6)
        self.conv2 = StdConv2d(mid_channels, mid_channels, 3, stride=stride, padding=1)
        self.gn2 = nn.GroupNorm(num_groups, mid_channels, eps=1e-6)
        self.conv3 = StdConv2d(mid_channels, out_channels, 1)
        self.gn3 = nn.GroupNorm(num_groups, out_channels, eps=1e-6)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                StdConv2d(in_channels, out_channels, 1, stride=stride), nn.GroupNorm(out_channels, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2Encoder(nn.Module):
    """The ResNetV2 CNN of TransUNet's hybrid encoder (R50 with ``units=(3, 4, 9)``, ``width=64``).

    Root: 7x7/2 weight-standardised convolution, ``GroupNorm``, ReLU, 3x3/2 max-pooling. Three stages of
    :class:`ResNetV2Bottleneck` units with ``4w``, ``8w`` and ``16w`` output channels (``w = width``), the last two
    starting with stride 2. Output: the 1/16 map (``16w`` channels) and the skip features deepest first,
    ``[8w @ 1/8, 4w @ 1/4, w @ 1/2]``.

    Args:
        in_channels: input channels.
        units: number of bottleneck units of the three stages.
        width: root width ``w``.
        num_groups: ``GroupNorm`` groups; must divide ``width``.

    Raises:
        ValueError: if ``units`` does not have three positive entries or ``width`` is not divisible by
            ``num_groups``.
    """

    def __init__(
        self, in_channels: int, units: Sequence[int] = (3, 4, 9), width: int = 64, num_groups: int = 32
    ) -> None:
        super().__init__()
        units = tuple(int(u) for u in units)
        if len(units) != 3 or min(units) < 1:
            raise ValueError(f"resnet_units must be three positive numbers of units per stage, got {units}.")
        if width < 1 or num_groups < 1 or width % num_groups != 0:
            raise ValueError(
                f"resnet_width ({width}) must be a positive multiple of resnet_groups ({num_groups}) for GroupNorm."
            )
        self.width = width
        self.out_channels = 16 * width
        self.root = nn.Sequential(
            StdConv2d(in_channels, width, 7, stride=2, padding=3),
            nn.GroupNorm(num_groups, width, eps=1e-6),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        cin = width
        for i, n_units in enumerate(units):
            cmid, cout = width * 2**i, width * 4 * 2**i
            stride = 1 if i == 0 else 2
            blocks = [ResNetV2Bottleneck(cin, cout, cmid, stride, num_groups)]
            blocks += [ResNetV2Bottleneck(cout, cout, cmid, 1, num_groups) for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s2 = self.root(x)
        s4 = self.stage1(self.pool(s2))
        s8 = self.stage2(s4)
        return self.stage3(s8), [s8, s4, s2]


class TransUNet(nn.Module):
    """TransUNet: ResNetV2 + ViT hybrid encoder and cascaded upsampler, with QKV, KV or KV+Pos attention.

    Encoder: :class:`ResNetV2Encoder` down to 1/16, a 1x1 patch embedding with learned position embeddings (MONAI's
    ``PatchEmbeddingBlock``, one token per 1/16 pixel, no class token), ``num_layers`` pre-norm transformer blocks
    (:class:`~kvmonai.networks.blocks.KVTransformerBlock`, LayerNorm eps 1e-6, qkv bias) and a final LayerNorm.
    Decoder ("DecoderCup"): 3x3 conv + BN + ReLU to ``head_channels``, four blocks of bilinear x2 upsampling,
    concatenation of a CNN skip (1/8, 1/4, 1/2 for the first ``n_skip`` blocks) and two 3x3 conv + BN + ReLU (MONAI's
    ``UpCat``), and a 3x3 convolution to ``out_channels`` logits at full resolution.

    Based on: Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation",
    arXiv:2102.04306, 2021 (reference code github.com/Beckschen/TransUNet); attention variants: Borji,
    "Key-Value Transformer", arXiv:2305.19129, and Hwa et al., BVM 2025, arXiv:2503.18862.

    Example::

        >>> from kvmonai.networks.nets.transunet import PRESETS, TransUNet
        >>> net = TransUNet(in_channels=1, out_channels=3, img_size=224, attention="kv", **PRESETS["paper"])

    Args:
        in_channels: input channels (1 for single MRI slices, e.g. 3 or 5 for 2.5D stacks of adjacent slices).
        out_channels: number of output logits per pixel (classes).
        img_size: input size ``(H, W)`` or one int for square inputs; each side must be divisible by 16. It fixes the
            number of position embeddings (``(H/16) * (W/16)``).
        resnet_units: bottleneck units of the three ResNet stages (R50: ``(3, 4, 9)``).
        resnet_width: root width of the ResNet (R50: 64); stage outputs are ``4x``, ``8x``, ``16x`` that.
        resnet_groups: ``GroupNorm`` groups in the ResNet (reference: 32).
        hidden_size: transformer width.
        mlp_dim: hidden width of the transformer MLPs.
        num_layers: number of transformer blocks.
        num_heads: attention heads.
        dropout_rate: dropout after the position embeddings and in the MLPs (reference: 0.1).
        attention_dropout_rate: dropout on the attention weights and attention output (reference: 0.0).
        qkv_bias: bias of the attention input projections (reference: True).
        head_channels: channels of the decoder's first convolution (reference: 512).
        decoder_channels: output channels of the four decoder blocks (1/8, 1/4, 1/2, 1/1 resolution).
        n_skip: number of decoder blocks (from the deepest) that receive a CNN skip connection, 0 to 3.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction (Borji: 50).
        save_attn: keep each block's last attention map in ``blocks[i].attn.att_mat``.

    Raises:
        ValueError: if ``attention`` is not one of ``"qkv"``, ``"kv"``, ``"kvpos"``.
        ValueError: if ``in_channels`` or ``out_channels`` is not positive.
        ValueError: if a side of ``img_size`` is not a positive multiple of 16.
        ValueError: if ``hidden_size`` is not divisible by ``num_heads``.
        ValueError: if ``decoder_channels`` does not have four entries or ``n_skip`` is not in ``0..3``.
        ValueError: if a dropout rate is not in ``[0, 1]``, or the ResNet arguments are invalid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: int | Sequence[int],
        resnet_units: Sequence[int] = (3, 4, 9),
        resnet_width: int = 64,
        resnet_groups: int = 32,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        n_skip: int = 3,
        attention: str = "qkv",
        pos_channels: int = 50,
        save_attn: bool = False,
    ) -> None:
        """Checks every argument, then builds the layers in forward order; long on purpose (see "Constructors" in
        :mod:`kvmonai.networks.nets`)."""
        super().__init__()
        check_option("attention", attention, ATTENTION_VARIANTS)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}.")
        size = tuple(int(s) for s in ensure_tuple_rep(img_size, 2))
        if any(s < 16 or s % 16 != 0 for s in size):
            raise ValueError(f"img_size must be a positive multiple of 16 (the hybrid encoder's stride), got {size}.")
        if hidden_size < 1 or num_heads < 1 or hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads}).")
        if num_layers < 1 or mlp_dim < 1 or head_channels < 1:
            raise ValueError("num_layers, mlp_dim and head_channels must be positive.")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 4 or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be four positive channel counts, got {decoder_channels}.")
        if n_skip not in (0, 1, 2, 3):
            raise ValueError(f"n_skip must be 0, 1, 2 or 3 (the ResNet has three skip features), got {n_skip}.")
        for name, rate in (("dropout_rate", dropout_rate), ("attention_dropout_rate", attention_dropout_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}.")

        self.attention = attention
        self.img_size = size
        self.grid = (size[0] // 16, size[1] // 16)
        self.n_skip = n_skip

        self.resnet = ResNetV2Encoder(in_channels, resnet_units, resnet_width, resnet_groups)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=self.resnet.out_channels,
            img_size=self.grid,
            patch_size=1,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )
        self.blocks = nn.ModuleList(
            [
                KVTransformerBlock(
                    hidden_size,
                    mlp_dim,
                    num_heads,
                    dropout_rate,
                    qkv_bias=qkv_bias,
                    save_attn=save_attn,
                    attention=attention,
                    pos_channels=pos_channels,
                    layer_norm_eps=1e-6,
                    attention_dropout_rate=attention_dropout_rate,
                )
                for _ in range(num_layers)
            ]
        )
        for block in self.blocks:
            # reference MLP initialisation: Xavier-uniform weights, N(0, 1e-6) biases
            for linear in (block.mlp.linear1, block.mlp.linear2):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

        self.conv_more = Convolution(2, hidden_size, head_channels, kernel_size=3, act="relu", norm="batch", bias=False)
        w = resnet_width
        skip_channels = [8 * w, 4 * w, w, 0]
        in_chns = (head_channels, *decoder_channels[:-1])
        self.decoder = nn.ModuleList(
            [
                UpCat(
                    2,
                    in_chns[i],
                    skip_channels[i] if i < n_skip else 0,
                    decoder_channels[i],
                    act="relu",
                    norm="batch",
                    bias=False,
                    upsample="nontrainable",
                    pre_conv=None,
                    interp_mode="bilinear",
                    align_corners=True,
                    is_pad=False,
                )
                for i in range(4)
            ]
        )
        self.segmentation_head = Convolution(
            2, decoder_channels[-1], out_channels, kernel_size=3, bias=True, conv_only=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images ``(B, in_channels, H, W)`` with ``(H, W) == img_size``.

        Returns:
            logits ``(B, out_channels, H, W)``.
        """
        x, features = self.resnet(x)
        x = self.patch_embedding(x)
        for block in self.blocks:
            x = block(x)
        x = self.encoder_norm(x)
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.grid[0], self.grid[1])
        x = self.conv_more(x)
        for i, up in enumerate(self.decoder):
            skip: Optional[torch.Tensor] = features[i] if i < self.n_skip else None  # noqa: UP045
            x = up(x, skip)
        return self.segmentation_head(x)
