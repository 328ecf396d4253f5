"""SETR: a pure-transformer segmenter (ViT encoder + convolutional decoder) with selectable attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution, PatchEmbeddingBlock, UpSample
from monai.utils import ensure_tuple_rep
from torch import nn

from kvmonai.networks.blocks import ATTENTION_VARIANTS, KVTransformerBlock
from kvmonai.utils import check_option

__all__ = ["DECODERS", "PRESETS", "SETR"]

#: SETR decoder heads
DECODERS: tuple[str, ...] = ("naive", "pup", "mla")

#: constructor arguments of each preset (beyond in/out channels, img_size and attention)
PRESETS: dict[str, dict[str, Any]] = {
    # ViT-B/16 + PUP at 224x224: 89,341,443 parameters with QKV (3 input channels, 3 classes)
    "paper": {
        "patch_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_layers": 12,
        "num_heads": 12,
        "decoder": "pup",
        "decoder_channels": 256,
    },
    # same shape, CPU-sized: 8x8 patches at 128x128 give 256 tokens
    "small": {
        "patch_size": 8,
        "hidden_size": 192,
        "mlp_dim": 768,
        "num_layers": 4,
        "num_heads": 3,
        "decoder": "pup",
        "decoder_channels": 64,
    },
    # for tests: 4x4 patches, 2 layers
    "tiny": {
        "patch_size": 4,
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_layers": 2,
        "num_heads": 2,
        "decoder": "pup",
        "decoder_channels": 16,
    },
}


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> Convolution:
    return Convolution(
        2, in_channels, out_channels, kernel_size=kernel_size, act="RELU", norm="BATCH", bias=bias, adn_ordering="NA"
    )


def _upsample(scale: int) -> UpSample:
    return UpSample(2, scale_factor=scale, mode="nontrainable", interp_mode="bilinear", align_corners=False)


class SETR(nn.Module):
    """SETR segmenter: a ViT encoder over patch tokens and a naive, PUP or MLA decoder.

    The encoder is MONAI's ``PatchEmbeddingBlock`` (conv patches + learned position embeddings), an optional class
    token with its own position embedding (SETR/timm keep one; it takes part in attention and is dropped before
    decoding) and ``num_layers`` pre-norm :class:`~kvmonai.networks.blocks.KVTransformerBlock` layers followed by a
    LayerNorm. Decoders (convolutions with bias, BatchNorm and ReLU, bilinear upsampling):

    * ``"naive"``: 1x1 conv to ``decoder_channels``, 1x1 conv to classes, upsample ``x patch_size``.
    * ``"pup"`` (progressive upsampling): ``log2(patch_size)`` stages of 3x3 conv + x2 upsampling, the class conv
      before the last x2 upsampling.
    * ``"mla"`` (multi-level aggregation): tokens of 4 evenly spaced layers, 1x1 reductions, top-down sums, 3x3
      convs, two 3x3 convs to ``decoder_channels // 2`` per level, x4 upsampling, concatenation and a 3x3 class
      conv, then upsampling to the input size.

    With ViT-B/16 at 224x224, 3 input channels and 3 classes, PUP has 89,341,443 parameters (QKV) and the naive
    decoder 85,996,803, matching a count of the reference layout.

    Based on: Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
    Transformers", CVPR 2021 (arXiv:2012.15840).

    Args:
        in_channels: input channels (1 for a single MR slice, 3 or 5 for 2.5D input).
        out_channels: number of output classes (logits).
        img_size: input size ``(H, W)`` or one int; each side divisible by ``patch_size``.
        patch_size: side of the square patches; a power of two for ``"pup"``.
        hidden_size: token dimension.
        mlp_dim: hidden dimension of the MLP.
        num_layers: number of transformer layers (a multiple of 4 for ``"mla"``).
        num_heads: attention heads.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction.
        decoder: ``"naive"``, ``"pup"`` or ``"mla"``.
        decoder_channels: channels of the decoder convolutions.
        cls_token: prepend a learned class token (as SETR's ViT does).
        dropout_rate: dropout in the encoder.
        qkv_bias: bias of the attention projections.

    Raises:
        ValueError: if an argument is out of range (see the messages).
    """

    __constants__ = ["num_prefix", "use_mla", "tap_after"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        attention: str = "qkv",
        pos_channels: int = 50,
        decoder: str = "pup",
        decoder_channels: int = 256,
        cls_token: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        """Checks every argument, then builds the layers in forward order; long on purpose (see "Constructors" in
        :mod:`kvmonai.networks.nets`)."""
        super().__init__()
        img = ensure_tuple_rep(img_size, 2)
        check_option("attention", attention, ATTENTION_VARIANTS)
        check_option("decoder", decoder, DECODERS)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if patch_size < 1 or any(s % patch_size for s in img):
            raise ValueError(f"img_size {img} must be divisible by patch_size {patch_size}.")
        if decoder == "pup" and (patch_size < 2 or patch_size & (patch_size - 1)):
            raise ValueError(f"the 'pup' decoder needs a power-of-two patch_size >= 2, got {patch_size}.")
        if decoder == "mla" and (num_layers % 4 or patch_size % 4):
            raise ValueError(
                f"the 'mla' decoder needs num_layers and patch_size divisible by 4, got {num_layers}, {patch_size}."
            )
        self.img_size = img
        self.grid = (img[0] // patch_size, img[1] // patch_size)
        self.patch_size = patch_size
        self.decoder = decoder

        self.patch_embedding = PatchEmbeddingBlock(
            in_channels, img, patch_size, hidden_size, num_heads, dropout_rate=dropout_rate, spatial_dims=2
        )
        self.num_prefix = 1 if cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, self.num_prefix, hidden_size))
        self.cls_position = nn.Parameter(torch.zeros(1, self.num_prefix, hidden_size))
        if cls_token:
            nn.init.trunc_normal_(self.cls_position, std=0.02)
        self.blocks = nn.ModuleList(
            KVTransformerBlock(
                hidden_size,
                mlp_dim,
                num_heads,
                dropout_rate,
                qkv_bias=qkv_bias,
                attention=attention,
                pos_channels=pos_channels,
                layer_norm_eps=1e-6,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        # the MLA decoder reads the tokens after layers L/4, L/2, 3L/4 (own LayerNorms) and L (self.norm)
        self.use_mla = decoder == "mla"
        taps = {num_layers * (i + 1) // 4 - 1 for i in range(3)} if self.use_mla else set()
        self.tap_after = tuple(i in taps for i in range(num_layers))
        self.tap_norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=1e-6) for _ in taps)

        c = decoder_channels
        if decoder == "naive":
            self.head = nn.Sequential(
                _conv_bn_relu(hidden_size, c, 1),
                nn.Conv2d(c, out_channels, 1),
                _upsample(patch_size),
            )
        elif decoder == "pup":
            n_up = patch_size.bit_length() - 1
            layers: list[nn.Module] = []
            for i in range(n_up):
                layers.append(_conv_bn_relu(hidden_size if i == 0 else c, c, 3))
                if i == n_up - 1:
                    layers.append(nn.Conv2d(c, out_channels, 1))
                layers.append(_upsample(2))
            self.head = nn.Sequential(*layers)
        else:
            self.mla_reduce = nn.ModuleList(_conv_bn_relu(hidden_size, c, 1, bias=False) for _ in range(4))
            # per level: 3x3 smoothing conv, two 3x3 convs to c/2 channels, x4 upsampling
            self.mla_levels = nn.ModuleList(
                nn.Sequential(
                    _conv_bn_relu(c, c, 3, bias=False),
                    _conv_bn_relu(c, c // 2, 3, bias=False),
                    _conv_bn_relu(c // 2, c // 2, 3, bias=False),
                    _upsample(4),
                )
                for _ in range(4)
            )
            self.head = nn.Sequential(nn.Conv2d(2 * c, out_channels, 3, padding=1), _upsample(patch_size // 4))
        if not self.use_mla:  # empty placeholders keep forward compilable by TorchScript
            self.mla_reduce, self.mla_levels = nn.ModuleList(), nn.ModuleList()

    def _to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + h*w, C) -> (B, C, h, w)."""
        x = tokens[:, self.num_prefix :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.grid[0], self.grid[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W) logits."""
        tokens = self.patch_embedding(x)
        if self.num_prefix > 0:
            cls = (self.cls_token + self.cls_position).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((cls, tokens), dim=1)
        taps: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if self.tap_after[i]:
                taps.append(tokens)
        tokens = self.norm(tokens)
        if not self.use_mla:
            return self.head(self._to_grid(tokens))

        for j, norm in enumerate(self.tap_norms):
            taps[j] = norm(taps[j])
        taps.append(tokens)
        levels: list[torch.Tensor] = []
        for j, reduce in enumerate(self.mla_reduce):
            levels.append(reduce(self._to_grid(taps[j])))
        for i in range(len(levels) - 2, -1, -1):  # top-down: deepest level first
            levels[i] = levels[i] + levels[i + 1]
        outs: list[torch.Tensor] = []
        for j, level_head in enumerate(self.mla_levels):
            outs.append(level_head(levels[j]))
        return self.head(torch.cat(outs, dim=1))
