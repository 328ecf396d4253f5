"""kvmonai networks: attention blocks (``kvmonai.networks.blocks``), architectures (``kvmonai.networks.nets``) and
the :func:`create` factory."""

from kvmonai.networks.factory import (
    ARCHITECTURES,
    PRESET_IMG_SIZE,
    PRESETS,
    REFERENCES,
    attentions_for,
    create,
    init_output_bias,
    network_class,
    pairs,
)

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
