"""Build any architecture/attention pair by name: ``create("setr", attention="kv", preset="small")``."""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "PRESET_IMG_SIZE",
    "REFERENCES",
    "attentions_for",
    "create",
    "init_output_bias",
    "network_class",
    "pairs",
]

#: architecture name -> (module, class); modules are imported on first use
_REGISTRY: dict[str, tuple[str, str]] = {
    "setr": ("kvmonai.networks.nets.setr", "SETR"),
    "transunet": ("kvmonai.networks.nets.transunet", "TransUNet"),
    "cvt": ("kvmonai.networks.nets.cvt", "CvTUNet"),
    "unetr": ("kvmonai.networks.nets.unetr", "KVUNETR"),
    "swin_unetr": ("kvmonai.networks.nets.swin_unetr", "KVSwinUNETR"),
    "unet": ("kvmonai.networks.nets.unet", "UNetCNN"),
}
#: the five transformer architectures the study compares (KV vs QKV)
ARCHITECTURES: tuple[str, ...] = ("setr", "transunet", "cvt", "unetr", "swin_unetr")
#: reference networks without attention, reported in their own rows (the CNN reference: ``unet`` / ``"cnn"``)
REFERENCES: tuple[str, ...] = ("unet",)
#: attentions of each architecture (SwinUNETR has no KV+Pos; the CNN reference has none, called ``"cnn"``)
_ATTENTIONS: dict[str, tuple[str, ...]] = {
    **{a: ("qkv", "kv", "kvpos") for a in ARCHITECTURES},
    "swin_unetr": ("qkv", "kv"),
    "unet": ("cnn",),
}
PRESETS: tuple[str, ...] = ("paper", "small", "tiny")
#: the input size each preset is designed and documented for
PRESET_IMG_SIZE: dict[str, int] = {"paper": 224, "small": 128, "tiny": 64}


def _check_arch(arch: str) -> None:
    if arch not in _REGISTRY:
        raise ValueError(f"arch must be one of {tuple(_REGISTRY)}, got {arch!r}.")


def network_class(arch: str) -> type[nn.Module]:
    """The network class of ``arch``.

    Raises:
        ValueError: if ``arch`` is unknown.
    """
    _check_arch(arch)
    module, name = _REGISTRY[arch]
    return getattr(importlib.import_module(module), name)


def attentions_for(arch: str) -> tuple[str, ...]:
    """Attention variants available for ``arch`` (SwinUNETR has no KV+Pos; the CNN reference only ``"cnn"``)."""
    _check_arch(arch)
    return _ATTENTIONS[arch]


def pairs(archs: Sequence[str] | None = None, references: bool = False) -> list[tuple[str, str]]:
    """All (architecture, attention) pairs in a stable order: 14 for the five architectures.

    Args:
        archs: architectures (default: the five transformers).
        references: append the reference networks (``("unet", "cnn")``), e.g. for the bundles.
    """
    names = list(archs or ARCHITECTURES) + (list(REFERENCES) if references and archs is None else [])
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
        arch: ``"setr"``, ``"transunet"``, ``"cvt"``, ``"unetr"``, ``"swin_unetr"``, or the CNN reference ``"unet"``.
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
    cls = network_class(arch)
    if attention not in attentions_for(arch):
        why = " (its relative position bias is kept in both; KV+Pos does not apply to windows)"
        raise ValueError(
            f"attention for {arch!r} must be one of {attentions_for(arch)}, got {attention!r}"
            + (why if arch == "swin_unetr" else "")
            + "."
        )
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    presets = importlib.import_module(cls.__module__).PRESETS
    kwargs = {**presets[preset], **overrides}
    net = cls(in_channels=in_channels, out_channels=out_channels, img_size=img_size, attention=attention, **kwargs)
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
