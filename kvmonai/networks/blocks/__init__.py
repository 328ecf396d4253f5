"""Attention blocks: one KV core (QKV, KV and KV+Pos self-attention, the KV+Pos correction, the SDPA routing), CvT's
convolutional attention and Swin window attention built on it, and helpers to put them into MONAI networks."""

from kvmonai.networks.blocks.cvt_attention import ATTN_SCALES, KV_MODES, CvTAttention, CvTBlock, CvTStage
from kvmonai.networks.blocks.kv_attention import (
    ATTENTION_VARIANTS,
    KVPositionCorrection,
    KVSelfAttention,
    append_key_bias,
    borji_positional_encoding,
    key_position_bias,
    positional_frequencies,
    positional_split,
    routed_sdpa,
    sincos_embedding,
)
from kvmonai.networks.blocks.swap import convert_attention, convert_window_attention, swap_attention
from kvmonai.networks.blocks.transformerblock import KVTransformerBlock
from kvmonai.networks.blocks.window_attention import WINDOW_ATTENTION_VARIANTS, WINDOW_KVPOS_NOTE, KVWindowAttention

__all__ = [
    "ATTENTION_VARIANTS",
    "ATTN_SCALES",
    "KV_MODES",
    "CvTAttention",
    "CvTBlock",
    "CvTStage",
    "KVPositionCorrection",
    "KVSelfAttention",
    "KVTransformerBlock",
    "KVWindowAttention",
    "WINDOW_ATTENTION_VARIANTS",
    "WINDOW_KVPOS_NOTE",
    "append_key_bias",
    "borji_positional_encoding",
    "convert_attention",
    "convert_window_attention",
    "key_position_bias",
    "positional_frequencies",
    "positional_split",
    "routed_sdpa",
    "sincos_embedding",
    "swap_attention",
]
