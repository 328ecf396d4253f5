"""kvmonai networks: attention blocks (``kvmonai.networks.blocks``), architectures (``kvmonai.networks.nets``), the
architecture registry (``kvmonai.networks.registry``), the :func:`create` factory and checkpoint files
(``kvmonai.networks.checkpoint``: atomic saves, safe loads)."""

from kvmonai.networks.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_atomic,
    state_mismatch,
    unwrap_model,
)
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
from kvmonai.networks.pretrained import LoadReport, PretrainedError, load_pretrained, read_state
from kvmonai.networks.registry import ARCHITECTURE_REGISTRY, ATTENTION_REGISTRY, Architecture, Attention, lookup

__all__ = [
    "STUDY_ARCHITECTURES",
    "ARCHITECTURE_REGISTRY",
    "ATTENTION_REGISTRY",
    "EXTRA_ARCHITECTURES",
    "PRESETS",
    "PRESET_IMG_SIZE",
    "REFERENCES",
    "TIMM_PREFIX",
    "Architecture",
    "Attention",
    "CheckpointError",
    "LoadReport",
    "PretrainedError",
    "attentions_for",
    "create",
    "init_output_bias",
    "load_checkpoint",
    "load_pretrained",
    "load_weights",
    "lookup",
    "network_class",
    "pairs",
    "read_state",
    "save_atomic",
    "state_mismatch",
    "unwrap_model",
]
