"""kvmonai networks: attention blocks (``kvmonai.networks.blocks``), architectures (``kvmonai.networks.nets``), the
architecture registry (``kvmonai.networks.registry``) and the :func:`create` factory."""

from kvmonai.networks.factory import (
    EXTRA_ARCHITECTURES,
    PRESET_IMG_SIZE,
    PRESETS,
    REFERENCES,
    STUDY_ARCHITECTURES,
    TIMM_PREFIX,
    attentions_for,
    create,
    init_output_bias,
    network_class,
    pairs,
)
from kvmonai.networks.registry import ARCHITECTURE_REGISTRY, ATTENTION_REGISTRY, Architecture, Attention, lookup

__all__ = [
    "STUDY_ARCHITECTURES",
    "ARCHITECTURE_REGISTRY",
    "ATTENTION_REGISTRY",
    "EXTRA_ARCHITECTURES",
    "Architecture",
    "Attention",
    "PRESETS",
    "PRESET_IMG_SIZE",
    "REFERENCES",
    "TIMM_PREFIX",
    "attentions_for",
    "create",
    "init_output_bias",
    "lookup",
    "network_class",
    "pairs",
]
