"""Build any architecture/attention pair by name: ``create("setr", attention="kv", preset="small")``.

What each architecture is and offers lives in :mod:`kvmonai.networks.registry`; this module only builds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from kvmonai.networks.registry import ARCHITECTURE_REGISTRY, PRESET_IMG_SIZE, PRESETS, lookup
from kvmonai.utils import check_option

__all__ = [
    "STUDY_ARCHITECTURES",
    "EXTRA_ARCHITECTURES",
    "PRESETS",
    "PRESET_IMG_SIZE",
    "REFERENCES",
    "TIMM_PREFIX",
    "attentions_for",
    "create",
    "init_output_bias",
    "network_class",
    "pairs",
]

#: the transformer architectures the study compares (KV vs QKV), in report order
STUDY_ARCHITECTURES: tuple[str, ...] = tuple(
    a.name for a in ARCHITECTURE_REGISTRY.values() if not a.reference_network and a.default_study
)
#: reference networks without attention, reported in their own rows (the CNN reference: ``unet`` / ``"cnn"``)
REFERENCES: tuple[str, ...] = tuple(a.name for a in ARCHITECTURE_REGISTRY.values() if a.reference_network)
#: registered transformers outside the default study (the timm backbones ``crossvit``, ``swin``, ``nextvit``): the
#: study, benchmark and complexity commands take them by name, and they have bundles
EXTRA_ARCHITECTURES: tuple[str, ...] = tuple(
    a.name for a in ARCHITECTURE_REGISTRY.values() if not a.reference_network and not a.default_study
)
#: ``create(TIMM_PREFIX + "<timm model name>")`` builds any timm backbone as a segmenter
TIMM_PREFIX = "timm:"


def network_class(arch: str) -> type[nn.Module]:
    """The network class of ``arch``.

    Raises:
        ValueError: if ``arch`` is unknown.
    """
    return lookup(arch).network_class


def attentions_for(arch: str) -> tuple[str, ...]:
    """Attention variants available for ``arch`` (SwinUNETR has no KV+Pos; the CNN reference only ``"cnn"``).

    Raises:
        ValueError: if ``arch`` is unknown.
    """
    return lookup(arch).attentions


def pairs(archs: Sequence[str] | None = None, references: bool = False, extra: bool = False) -> list[tuple[str, str]]:
    """All (architecture, attention) pairs in a stable order: 14 for the five architectures.

    Args:
        archs: architectures (default: the five transformers).
        references: append the reference networks (``("unet", "cnn")``), e.g. for the bundles.
        extra: with the default ``archs``, append the architectures outside the default study
            (:data:`EXTRA_ARCHITECTURES`, after the references): every registered pair, as the bundles need.
    """
    default = archs is None
    names = list(archs or STUDY_ARCHITECTURES) + (list(REFERENCES) if references and default else [])
    names += list(EXTRA_ARCHITECTURES) if extra and default else []
    return [(a, att) for a in names for att in attentions_for(a)]


def create(
    arch: str,
    attention: str = "qkv",
    preset: str = "paper",
    in_channels: int = 3,
    out_channels: int = 3,
    img_size: int | Sequence[int] = 224,
    output_prior: float | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a segmentation network mapping ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` logits.

    Args:
        arch: ``"setr"``, ``"transunet"``, ``"cvt"``, ``"unetr"``, ``"swin_unetr"``, the CNN reference ``"unet"``,
            the timm backbones ``"crossvit"``, ``"swin"``, ``"nextvit"``, or ``"timm:<model name>"`` for any timm
            model (:class:`~kvmonai.networks.nets.timm_seg.TimmSegmenter`; its presets only set the decoder width,
            ``overrides`` reach the class, e.g. ``backbone_kwargs={"depth": 6}``).
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"`` (SwinUNETR: ``"qkv"``, ``"kv"``; the CNN reference: ``"cnn"``).
        preset: ``"paper"`` (reference sizes at 224x224), ``"small"`` (2-core CPU training at 128x128) or
            ``"tiny"`` (tests); the sizes are in each network module's ``PRESETS``.
        in_channels: input channels (1 for single slices, 3 or 5 for 2.5D stacks of adjacent slices).
        out_channels: classes (3 for large bowel, small bowel, stomach; multi-label logits).
        img_size: input size ``(H, W)`` or one int.
        output_prior: start every class logit at this foreground probability (:func:`init_output_bias`); ``None``
            keeps the framework's initialisation.
        overrides: constructor arguments replacing the preset's (e.g. ``decoder="naive"`` for SETR).

    Raises:
        ValueError: for an unknown ``arch``, ``attention`` or ``preset`` (and the networks' own argument checks).
    """
    if arch.startswith(TIMM_PREFIX):
        from kvmonai.networks.nets import timm_seg

        check_option("preset", preset, PRESETS)
        net: nn.Module = timm_seg.TimmSegmenter(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=img_size,
            attention=attention,
            model_name=arch[len(TIMM_PREFIX) :],
            **{**timm_seg.PRESETS[preset], **overrides},
        )
        return init_output_bias(net, output_prior, out_channels)
    record = lookup(arch)
    record.check_attention(attention)
    check_option("preset", preset, PRESETS)
    kwargs = {**record.presets[preset], **overrides}
    net = record.network_class(
        in_channels=in_channels, out_channels=out_channels, img_size=img_size, attention=attention, **kwargs
    )
    return init_output_bias(net, output_prior, out_channels)


def init_output_bias(network: nn.Module, prior: float | None, out_channels: int = 3) -> nn.Module:
    """Start the class logits at the organs' prior: the bias of the final convolution set to ``log(p / (1 - p))``.

    With zero bias every pixel starts at probability 0.5, and the first part of training only learns that organs are
    rare (about 2 % of pixels here). Starting at the prior skips that phase; the focal-loss paper uses the same
    initialisation for rare foreground classes (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
    arXiv:1708.02002). The final convolution is the last registered ``Conv2d`` with ``out_channels`` outputs and a
    bias, which is the output layer of every kvmonai network (a test checks the logits of each).

    Args:
        network: a network from :func:`create`.
        prior: foreground probability each class starts at, in (0, 1); ``None`` leaves the network unchanged.
        out_channels: number of classes.

    Returns:
        ``network`` (changed in place).

    Raises:
        ValueError: if ``prior`` is outside (0, 1) or the network has no such output convolution.
    """
    if prior is None:
        return network
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}.")
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d) and m.out_channels == out_channels]
    convs = [m for m in convs if m.bias is not None]
    if not convs:
        raise ValueError(f"{type(network).__name__} has no Conv2d with {out_channels} outputs and a bias to set.")
    nn.init.constant_(convs[-1].bias, math.log(prior / (1.0 - prior)))
    return network
