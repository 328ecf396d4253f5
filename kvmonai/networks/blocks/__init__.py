"""Attention blocks: QKV, KV and KV+Pos self-attention, and helpers to put them into MONAI networks."""

from kvmonai.networks.blocks.kv_attention import (
    ATTENTION_VARIANTS,
    KVSelfAttention,
    borji_positional_encoding,
    positional_split,
)
from kvmonai.networks.blocks.swap import convert_attention, swap_attention
from kvmonai.networks.blocks.transformerblock import KVTransformerBlock

__all__ = [
    "ATTENTION_VARIANTS",
    "KVSelfAttention",
    "KVTransformerBlock",
    "borji_positional_encoding",
    "convert_attention",
    "positional_split",
    "swap_attention",
]
