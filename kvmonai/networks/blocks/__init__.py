"""Attention blocks: QKV, KV and KV+Pos self-attention, and helpers to put them into MONAI networks."""

from kvmonai.networks.blocks.kv_attention import (
    ATTENTION_VARIANTS,
    KVSelfAttention,
    append_key_bias,
    borji_positional_encoding,
    positional_frequencies,
    positional_split,
    sincos_embedding,
)
from kvmonai.networks.blocks.swap import convert_attention, convert_window_attention, swap_attention
from kvmonai.networks.blocks.transformerblock import KVTransformerBlock
from kvmonai.networks.blocks.window_attention import WINDOW_ATTENTION_VARIANTS, KVWindowAttention

__all__ = [
    "ATTENTION_VARIANTS",
    "KVSelfAttention",
    "KVTransformerBlock",
    "KVWindowAttention",
    "WINDOW_ATTENTION_VARIANTS",
    "append_key_bias",
    "borji_positional_encoding",
    "convert_attention",
    "convert_window_attention",
    "positional_frequencies",
    "positional_split",
    "sincos_embedding",
    "swap_attention",
]
