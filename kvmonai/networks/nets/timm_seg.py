"""Any timm backbone as a 2D segmentation network: timm features, FPN-style laterals and MONAI's U-Net decoder.

``TimmSegmenter(3, 3, 224, "kv", "swin_tiny_patch4_window7_224")`` builds timm's model by name (never with
pretrained weights), takes its multi-scale feature maps (``features_only``, or ``forward_intermediates`` for models
without it), brings each to a power-of-two stride and decodes them with MONAI's ``UNetDecoder`` to logits at the
input resolution. The backbone's self-attention is converted to the chosen variant by
:func:`~kvmonai.networks.blocks.swap_attention`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from kvmonai.networks.blocks import ATTENTION_VARIANTS, swap_attention, unsupported_attention
from kvmonai.networks.timm_import import import_timm
from kvmonai.utils import check_option

__all__ = [
    "CROSSVIT_PRESETS",
    "NEXTVIT_PRESETS",
    "PRESETS",
    "SWIN_PRESETS",
    "TimmSegmenter",
    "decoder_width_at",
    "feature_strides",
]

#: presets of ``create("timm:<any name>")``: the backbone is timm's model as named, only the decoder width changes
#: (a preset cannot know the sizes of an arbitrary timm model; pass ``backbone_kwargs`` to shrink one)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"decoder_width": 16},
    "small": {"decoder_width": 8},
    "tiny": {"decoder_width": 4},
}

#: CrossViT (Chen et al., ICCV 2021): CrossViT-15 at the paper preset. All presets use the CrossVit class defaults
#: patch 8 / 16 with both branches at the input size (``img_scale`` 1, 1): the branches land on strides 8 and 16,
#: which the decoder takes as they are, and any input side divisible by 16 works. timm's ``crossvit_*_240`` variants
#: use patches 12 / 16 and resize the input per branch (240 and 224), giving 20x20 and 14x14 grids.
_CROSSVIT_INPUT: dict[str, Any] = {"patch_size": (8, 16), "img_scale": (1.0, 1.0)}
CROSSVIT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model_name": "crossvit_15_240",
        "decoder_width": 16,
        "backbone_kwargs": dict(_CROSSVIT_INPUT),
    },
    "small": {
        "model_name": "crossvit_15_240",
        "decoder_width": 8,
        "backbone_kwargs": {
            **_CROSSVIT_INPUT,
            "embed_dim": (48, 96),
            "depth": ((1, 2, 0), (1, 2, 0)),
            "num_heads": (2, 4),
            "mlp_ratio": (2.0, 2.0, 1.0),
        },
    },
    "tiny": {
        "model_name": "crossvit_15_240",
        "decoder_width": 4,
        "backbone_kwargs": {
            **_CROSSVIT_INPUT,
            "embed_dim": (16, 32),
            "depth": ((1, 1, 0),),
            "num_heads": (1, 2),
            "mlp_ratio": (2.0, 2.0, 1.0),
        },
    },
}

#: Swin Transformer v1 (Liu et al., ICCV 2021): Swin-T at the paper preset; smaller windows for the smaller inputs
SWIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"model_name": "swin_tiny_patch4_window7_224", "decoder_width": 16},
    "small": {
        "model_name": "swin_tiny_patch4_window7_224",
        "decoder_width": 8,
        "backbone_kwargs": {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 8},
    },
    "tiny": {
        "model_name": "swin_tiny_patch4_window7_224",
        "decoder_width": 4,
        "backbone_kwargs": {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 4), "window_size": 4},
    },
}

#: Next-ViT (Li et al., 2022, arXiv:2207.05501): Next-ViT-S at the paper preset. timm fixes its stage widths
#: (96, 256, 512, 1024), so the smaller presets only take blocks away: one transformer block (with its E-MHSA) in
#: each of stages 2, 3 and 4, the fewest its layout allows.
NEXTVIT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"model_name": "nextvit_small", "decoder_width": 16},
    "small": {"model_name": "nextvit_small", "decoder_width": 8, "backbone_kwargs": {"depths": (2, 2, 5, 2)}},
    "tiny": {"model_name": "nextvit_small", "decoder_width": 4, "backbone_kwargs": {"depths": (1, 1, 5, 1)}},
}

#: the decoder width grows with the stride up to this multiple of ``decoder_width``
_MAX_WIDTH_FACTOR = 16
#: features taken from a single-scale backbone (a ViT): blocks at 1/4, 2/4, 3/4 and all of the depth, as in UNETR
_SINGLE_SCALE_LEVELS = 4


def decoder_width_at(stride: int, decoder_width: int) -> int:
    """Channels of the decoder (and of the lateral projection) at ``stride``: ``decoder_width * min(stride, 16)``.

    With ``decoder_width=16`` this gives MONAI ``FlexibleUNet``'s default decoder (256, 128, 64, 32, 16 channels at
    strides 16, 8, 4, 2, 1).
    """
    return decoder_width * min(int(stride), _MAX_WIDTH_FACTOR)


def feature_strides(reductions: Sequence[float]) -> tuple[int, ...]:
    """The power-of-two strides the decoder assigns to features of ``reductions``, sorted fine to coarse.

    The coarsest feature keeps its reduction rounded to a power of two; each finer one gets half the stride of the
    next coarser, so every decoder block upsamples by 2 and takes one skip. Hierarchical backbones keep their
    strides (4, 8, 16, 32); features of one stride (a ViT's blocks at 16) become 2, 4, 8, 16, as UNETR resamples
    them; CrossViT's branches (8 and 16) stay.

    Args:
        reductions: input side / feature side of each feature, sorted fine to coarse (non-decreasing).

    Raises:
        ValueError: if the reductions are not sorted, or there are too many features for the coarsest stride (the
            finest would get a stride below 2).
    """
    if not reductions or any(b < a for a, b in zip(reductions, reductions[1:], strict=False)):
        raise ValueError(f"reductions must be a non-empty fine-to-coarse sequence, got {tuple(reductions)}.")
    coarsest = 2 ** max(1, round(math.log2(reductions[-1])))
    strides = tuple(coarsest // 2 ** (len(reductions) - 1 - i) for i in range(len(reductions)))
    if strides[0] < 2:
        raise ValueError(
            f"{len(reductions)} feature levels do not fit below stride {coarsest}: the finest would be below 2; "
            "pass fewer out_indices."
        )
    return strides


def _close_names(timm: Any, name: str) -> list[str]:
    """timm model names close to ``name`` (for the unknown-name error)."""
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    stem = name.split("_")[0]
    return close or timm.list_models(f"{stem}*")[:5]


class TimmSegmenter(nn.Module):
    """A timm backbone with a U-Net decoder: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` logits.

    Encoder: ``timm.create_model(model_name, pretrained=False, features_only=True, out_indices=..., in_chans=...,
    img_size=...)`` (``img_size`` only where the model takes it; ``forward_intermediates`` where a model has no
    ``features_only``), kept as ``self.backbone`` unchanged but for its attention. Which features: one per feature
    stride timm reports (the last block of each stage, or of each CrossViT branch); for single-scale backbones (all
    blocks at one stride, e.g. ViT, DeiT) four blocks at 1/4, 2/4, 3/4 and the full depth. Each feature gets a 1x1
    convolution to the decoder width of its stride (the lateral connections of an FPN, Lin et al., CVPR 2017,
    arXiv:1612.03144) and is resampled bilinearly to its power-of-two stride (:func:`feature_strides`) where its grid
    differs. Decoder: MONAI ``flexible_unet.UNetDecoder`` (upsample by 2, concatenate the skip, two convolutions; the
    blocks below the finest feature have no skip) and ``SegmentationHead``, with MONAI ``FlexibleUNet``'s defaults
    (batch norm, ReLU, nearest upsampling with a 1x1 pre-convolution). A bilinear resize to the input size follows
    only where the sides are not multiples of the coarsest stride.

    For ``"kv"`` and ``"kvpos"`` the backbone's attention layers are converted by
    :func:`~kvmonai.networks.blocks.swap_attention`, keeping their K, V and output weights; ``"qkv"`` leaves timm's
    (QKV) attention as it is, so a backbone without attention (a CNN) takes only ``"qkv"``. With
    ``skip_unsupported`` the layers it cannot convert (CrossViT's cross-attention, whose query is the class token of
    the other branch) stay timm's; ``self.kept_attention`` lists those (``{path: reason}``). A dry run at
    ``img_size`` (batch 1, eval mode, no gradient) checks that the backbone takes that size and gives the feature
    shapes.

    Based on: Wightman, "PyTorch Image Models" (timm); Ronneberger et al., "U-Net", MICCAI 2015
    (arXiv:1505.04597); Borji, "Key-Value Transformer", arXiv:2305.19129.

    Args:
        in_channels: input channels (timm's ``in_chans``; 3 or 5 for the 2.5D stacks).
        out_channels: output classes (logits).
        img_size: input size ``(H, W)`` or one int; passed to timm as ``img_size`` where the model takes it.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"`` (``"kvpos"`` only where every attention of the backbone is
            global self-attention that ``swap_attention`` converts; not for windowed attention, nor where a layer
            is left unconverted).
        model_name: a timm model name (``timm.list_models()``).
        decoder_width: decoder channels at stride 1; they double per stride up to 16x (:func:`decoder_width_at`).
        backbone_kwargs: further ``timm.create_model`` arguments (model sizes such as ``embed_dim``, ``depths``).
        out_indices: timm feature indices to decode (default: see above).
        skip_unsupported: leave attention layers that ``swap_attention`` cannot convert as they are (otherwise they
            raise).
        pos_channels: channels ``m`` of the KV+Pos correction.

    Raises:
        ValueError: if ``model_name`` is not a timm model (the message lists close names), ``attention`` is unknown
            or not available for the backbone (also: ``"kv"`` for a backbone without attention, or with an attention
            layer it cannot convert and ``skip_unsupported=False``), the backbone cannot take ``img_size`` or its
            ``backbone_kwargs``, or a size argument is not positive.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        attention: str = "qkv",
        model_name: str = "swin_tiny_patch4_window7_224",
        decoder_width: int = 16,
        backbone_kwargs: Mapping[str, Any] | None = None,
        out_indices: Sequence[int] | None = None,
        skip_unsupported: bool = True,
        pos_channels: int = 50,
    ) -> None:
        """Checks every argument, then builds the layers in forward order; long on purpose (see "Constructors" in
        :mod:`kvmonai.networks.nets`)."""
        super().__init__()
        check_option("attention", attention, ATTENTION_VARIANTS)
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(f"img_size must be one positive int or two, got {img_size}.")
        counts = {"in_channels": in_channels, "out_channels": out_channels, "decoder_width": decoder_width}
        for name, value in counts.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        timm = import_timm()
        if not timm.is_model(model_name):
            raise ValueError(
                f"model_name {model_name!r} is not a timm model; close names: {_close_names(timm, model_name)} "
                "(see timm.list_models())."
            )
        self.model_name = model_name
        self.attention = attention
        self.img_size = sizes
        # the constructor arguments, so that pretrained-weight loading can build the QKV twin (timm's conversion
        # does not go back from KV to QKV)
        self.init_args = {
            "in_channels": in_channels, "out_channels": out_channels, "img_size": sizes, "attention": attention,
            "model_name": model_name, "decoder_width": decoder_width, "backbone_kwargs": dict(backbone_kwargs or {}),
            "out_indices": out_indices, "skip_unsupported": skip_unsupported, "pos_channels": pos_channels,
        }  # fmt: skip
        kwargs = {"pretrained": False, "in_chans": in_channels, **dict(backbone_kwargs or {})}
        kwargs, info = self._probe(timm, model_name, kwargs, sizes)
        indices = list(out_indices) if out_indices is not None else self._default_indices(model_name, info)
        self.backbone, self.intermediates = self._build(timm, model_name, kwargs, indices)
        self.out_indices = tuple(indices)
        self.nhwc = str(getattr(self.backbone, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.kept_attention = unsupported_attention(self.backbone)
        if attention == "kvpos" and self.kept_attention:
            reasons = "; ".join(sorted(set(self.kept_attention.values())))
            raise ValueError(
                f"attention 'kvpos' needs every attention of {model_name!r} to be global self-attention that "
                f"swap_attention converts; {len(self.kept_attention)} would stay as they are "
                f"({', '.join(self.kept_attention)}: {reasons}). Use 'kv'."
            )

        shapes = self._dry_run(in_channels, sizes)
        order = sorted(range(len(shapes)), key=lambda i: (-shapes[i][1] * shapes[i][2], i))
        reductions = [math.sqrt(sizes[0] * sizes[1] / (shapes[i][1] * shapes[i][2])) for i in order]
        self.order = tuple(order)
        self.strides = feature_strides(reductions)
        self.feature_channels = tuple(shapes[i][0] for i in order)

        if attention != "qkv":  # timm's attention is QKV: swap_attention would leave it as it is
            try:
                swap_attention(self.backbone, attention, pos_channels=pos_channels, skip_unsupported=skip_unsupported)
            except (TypeError, ValueError) as err:
                raise ValueError(f"attention {attention!r} for timm model {model_name!r}: {err}") from err

        widths = [decoder_width_at(s, decoder_width) for s in self.strides]
        self.laterals = nn.ModuleList(
            nn.Conv2d(c, w, kernel_size=1) for c, w in zip(self.feature_channels, widths, strict=True)
        )
        self.extra_blocks = int(math.log2(self.strides[0]))  # blocks below the finest feature, without a skip
        blocks = len(self.strides) - 1 + self.extra_blocks
        self.decoder = UNetDecoder(
            spatial_dims=2,
            encoder_channels=[0] * self.extra_blocks + widths,
            decoder_channels=[decoder_width_at(self.strides[-1] // 2 ** (j + 1), decoder_width) for j in range(blocks)],
            act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=True,
        )
        self.head = SegmentationHead(
            spatial_dims=2, in_channels=decoder_width, out_channels=out_channels, kernel_size=3
        )

    @staticmethod
    def _probe(
        timm: Any, name: str, kwargs: dict[str, Any], sizes: tuple[int, int]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``kwargs`` plus ``img_size`` where the model takes it, and the model's ``feature_info``.

        The model is built on the meta device (nothing is allocated, no weights are initialised); a model that
        cannot be built there is built on the CPU instead.

        Raises:
            ValueError: if the model cannot be built with ``kwargs``.
        """
        candidates = [kwargs] if "img_size" in kwargs else [{**kwargs, "img_size": sizes}, kwargs]
        error: Exception | None = None
        for device in ("meta", "cpu"):
            for i, candidate in enumerate(candidates):
                try:
                    with torch.device(device):
                        model = timm.create_model(name, **candidate)
                except TypeError as err:  # an argument the model does not take: try without img_size
                    error = err
                    if "img_size" in str(err) and i + 1 < len(candidates):
                        continue
                    raise ValueError(f"timm model {name!r} rejects its arguments {sorted(candidate)}: {err}") from err
                except Exception as err:  # noqa: BLE001 - e.g. an operation the meta device lacks: try the CPU
                    error = err
                    break
                return candidate, list(getattr(model, "feature_info", None) or [])
        raise ValueError(f"timm model {name!r} cannot be built with {sorted(kwargs)}: {error}") from error

    @staticmethod
    def _default_indices(name: str, info: Sequence[Mapping[str, Any]]) -> list[int]:
        """The last feature of each stride timm reports; four spread over the depth for single-scale backbones."""
        if not info:
            raise ValueError(f"timm model {name!r} reports no features (feature_info); pass out_indices.")
        reductions = [float(f["reduction"]) for f in info]
        if len(set(reductions)) == 1:
            n = len(info)
            levels = min(_SINGLE_SCALE_LEVELS, n)
            return sorted({max(0, round(n * (k + 1) / levels) - 1) for k in range(levels)})
        return [i for i, r in enumerate(reductions) if i + 1 == len(reductions) or reductions[i + 1] != r]

    @staticmethod
    def _build(timm: Any, name: str, kwargs: dict[str, Any], indices: list[int]) -> tuple[nn.Module, bool]:
        """timm's ``features_only`` model, or the model itself (pruned) for ``forward_intermediates``."""
        try:
            return timm.create_model(name, features_only=True, out_indices=indices, **kwargs), False
        except Exception as err:  # noqa: BLE001 - timm has no one error type for a model without features_only
            features_error = err
        model = timm.create_model(name, **kwargs)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"timm model {name!r} offers neither features_only ({features_error}) nor forward_intermediates."
            ) from features_error
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        return model, True

    def _dry_run(self, in_channels: int, sizes: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each backbone feature for one input of ``sizes``."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                feats = self.features(torch.zeros(1, in_channels, *sizes))
        except Exception as err:  # noqa: BLE001 - any failure here means the size or the arguments do not fit
            raise ValueError(f"timm model {self.model_name!r} cannot take img_size={sizes}: {err}") from err
        finally:
            self.backbone.train(was_training)
        if any(f.ndim != 4 for f in feats):
            raise ValueError(f"timm model {self.model_name!r} gives features of shapes {[f.shape for f in feats]}, "
                             "not 2D maps.")  # fmt: skip
        return [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in feats]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's features as ``(B, C, h, w)`` maps, in timm's order."""
        if self.intermediates:
            feats = self.backbone.forward_intermediates(
                x, indices=list(self.out_indices), intermediates_only=True, output_fmt="NCHW"
            )
        else:
            feats = self.backbone(x)
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, out_channels, H, W)`` logits.
        """
        h, w = x.shape[-2], x.shape[-1]
        feats = self.features(x)
        skips: list[torch.Tensor] = []
        for j, lateral in enumerate(self.laterals):
            f = lateral(feats[self.order[j]])
            size = (h // self.strides[j], w // self.strides[j])
            if f.shape[-2] != size[0] or f.shape[-1] != size[1]:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            skips.append(f)
        # UNetDecoder's first extra_blocks entries are channel placeholders only: no block takes them as skips
        out = self.head(self.decoder([skips[0]] * self.extra_blocks + skips, len(skips) - 1))
        if out.shape[-2] != h or out.shape[-1] != w:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out
