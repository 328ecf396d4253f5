"""Build any architecture/attention pair by name: ``create("setr", attention="kv", preset="small")``."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["ARCHITECTURES", "PRESETS", "PRESET_IMG_SIZE", "attentions_for", "create", "network_class", "pairs"]

#: architecture name -> (module, class); modules are imported on first use
_REGISTRY: dict[str, tuple[str, str]] = {
    "setr": ("kvmonai.networks.nets.setr", "SETR"),
    "transunet": ("kvmonai.networks.nets.transunet", "TransUNet"),
    "cvt": ("kvmonai.networks.nets.cvt", "CvTUNet"),
    "unetr": ("kvmonai.networks.nets.unetr", "KVUNETR"),
    "swin_unetr": ("kvmonai.networks.nets.swin_unetr", "KVSwinUNETR"),
}
ARCHITECTURES: tuple[str, ...] = tuple(_REGISTRY)
PRESETS: tuple[str, ...] = ("paper", "small", "tiny")
#: the input size each preset is designed and documented for
PRESET_IMG_SIZE: dict[str, int] = {"paper": 224, "small": 128, "tiny": 64}


def _check_arch(arch: str) -> None:
    if arch not in _REGISTRY:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}.")


def network_class(arch: str) -> type[nn.Module]:
    """The network class of ``arch``.

    Raises:
        ValueError: if ``arch`` is unknown.
    """
    _check_arch(arch)
    module, name = _REGISTRY[arch]
    return getattr(importlib.import_module(module), name)


def attentions_for(arch: str) -> tuple[str, ...]:
    """Attention variants available for ``arch`` (SwinUNETR has no KV+Pos)."""
    _check_arch(arch)
    return ("qkv", "kv") if arch == "swin_unetr" else ("qkv", "kv", "kvpos")


def pairs(archs: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """All (architecture, attention) pairs, in a stable order: 14 for the five architectures."""
    return [(a, att) for a in (archs or ARCHITECTURES) for att in attentions_for(a)]


def create(
    arch: str,
    attention: str = "qkv",
    preset: str = "paper",
    in_channels: int = 3,
    out_channels: int = 3,
    img_size: int | Sequence[int] = 224,
    **overrides: Any,
) -> nn.Module:
    """Build a segmentation network mapping ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` logits.

    Args:
        arch: ``"setr"``, ``"transunet"``, ``"cvt"``, ``"unetr"`` or ``"swin_unetr"``.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"`` (SwinUNETR: ``"qkv"``, ``"kv"``).
        preset: ``"paper"`` (reference sizes at 224x224), ``"small"`` (2-core CPU training at 128x128) or
            ``"tiny"`` (tests); the sizes are in each network module's ``PRESETS``.
        in_channels: input channels (1 for single slices, 3 or 5 for 2.5D stacks of adjacent slices).
        out_channels: classes (3 for large bowel, small bowel, stomach; multi-label logits).
        img_size: input size ``(H, W)`` or one int.
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
    return cls(in_channels=in_channels, out_channels=out_channels, img_size=img_size, attention=attention, **kwargs)
