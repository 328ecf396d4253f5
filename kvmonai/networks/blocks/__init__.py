"""Attention blocks: one KV core (QKV, KV and KV+Pos self-attention, the KV+Pos correction, the SDPA routing), CvT's
convolutional attention and Swin window attention built on it, and helpers to put them into MONAI and timm networks."""

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
from kvmonai.networks.blocks.swap import (
    QUERY_PROJECTION_NAMES,
    convert_attention,
    convert_window_attention,
    swap_attention,
    unsupported_attention,
)
from kvmonai.networks.blocks.timm_attention import (
    TIMM_ATTENTION_CLASSES,
    TIMM_KVPOS_CLASSES,
    TIMM_UNSUPPORTED,
    KeyAsQuery,
    KeyValueLinear,
    TimmKVAttention,
    TimmKVAttentionRope,
    TimmKVEfficientAttention,
    check_timm_attention,
    convert_timm_attention,
    is_converted_timm_attention,
)
from kvmonai.networks.blocks.transformerblock import KVTransformerBlock
from kvmonai.networks.blocks.window_attention import WINDOW_ATTENTION_VARIANTS, WINDOW_KVPOS_NOTE, KVWindowAttention

__all__ = [
    "ATTENTION_VARIANTS",
    "ATTN_SCALES",
    "QUERY_PROJECTION_NAMES",
    "TIMM_ATTENTION_CLASSES",
    "TIMM_KVPOS_CLASSES",
    "TIMM_UNSUPPORTED",
    "KV_MODES",
    "CvTAttention",
    "CvTBlock",
    "CvTStage",
    "KVPositionCorrection",
    "KVSelfAttention",
    "KVTransformerBlock",
    "KVWindowAttention",
    "KeyAsQuery",
    "KeyValueLinear",
    "TimmKVAttention",
    "TimmKVAttentionRope",
    "TimmKVEfficientAttention",
    "WINDOW_ATTENTION_VARIANTS",
    "WINDOW_KVPOS_NOTE",
    "append_key_bias",
    "borji_positional_encoding",
    "check_timm_attention",
    "convert_attention",
    "convert_timm_attention",
    "convert_window_attention",
    "is_converted_timm_attention",
    "key_position_bias",
    "positional_frequencies",
    "positional_split",
    "routed_sdpa",
    "sincos_embedding",
    "swap_attention",
    "unsupported_attention",
]
