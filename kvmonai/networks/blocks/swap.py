"""Swap the self-attention of an existing module tree (a MONAI ``ViT`` or ``UNETR``, a timm model) for a given variant.

MONAI's ``SABlock`` and Swin ``WindowAttention`` are converted here; timm's attention classes by
:mod:`kvmonai.networks.blocks.timm_attention`. :func:`swap_attention` finds all of them in a tree, refuses (or, on
request, skips) attention it cannot convert, and checks everything before it replaces anything.
"""

from __future__ import annotations

import logging

import torch
from monai.networks.blocks import SABlock
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, KVSelfAttention
from kvmonai.networks.blocks.timm_attention import (
    TIMM_ATTENTION_CLASSES,
    TIMM_UNSUPPORTED,
    check_timm_attention,
    convert_timm_attention,
    is_converted_timm_attention,
    timm_class_name,
)
from kvmonai.networks.blocks.window_attention import (
    WINDOW_ATTENTION_VARIANTS,
    WINDOW_KVPOS_NOTE,
    KVWindowAttention,
)
from kvmonai.utils import check_option

__all__ = [
    "QUERY_PROJECTION_NAMES",
    "convert_attention",
    "convert_window_attention",
    "swap_attention",
    "unsupported_attention",
]

logger = logging.getLogger(__name__)


def _projections(block: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The q/k/v projection weights and biases of an ``SABlock`` or ``KVSelfAttention`` (q may be missing)."""
    inner = block.inner_dim
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if block.use_combined_linear:
        fused = block.kv if isinstance(block, KVSelfAttention) and block.attention != "qkv" else block.qkv
        names = ("k", "v") if fused.weight.shape[0] == 2 * inner else ("q", "k", "v")
        for i, name in enumerate(names):
            rows = slice(i * inner, (i + 1) * inner)
            out[name] = (fused.weight[rows], None if fused.bias is None else fused.bias[rows])
    else:
        for name in ("q", "k", "v"):
            layer = getattr(block, f"to_{name}")
            if isinstance(layer, nn.Linear):
                out[name] = (layer.weight, layer.bias)
    return out


def convert_attention(block: nn.Module, attention: str, pos_channels: int = 50) -> KVSelfAttention:
    """A :class:`KVSelfAttention` of variant ``attention`` computing with ``block``'s K, V and output weights.

    The query of a ``"qkv"`` target is copied from the source's query when there is one and from its key otherwise,
    so that a KV model converted to QKV starts as the same function. Relative position embeddings are moved over,
    a KV+Pos correction is kept when the target is ``"kvpos"`` too. Weights are copied, not shared.

    Args:
        block: an ``SABlock`` or a ``KVSelfAttention``.
        attention: target variant, one of ``ATTENTION_VARIANTS``.
        pos_channels: channels ``m`` of a new KV+Pos correction.

    Returns:
        the new module, on the device and dtype of ``block``.

    Raises:
        TypeError: if ``block`` is neither an ``SABlock`` nor a ``KVSelfAttention``.
        ValueError: if ``attention`` is not a known variant.
    """
    if not isinstance(block, (SABlock, KVSelfAttention)):
        raise TypeError(f"convert_attention expects an SABlock or KVSelfAttention, got {type(block).__name__}.")
    check_option("attention", attention, ATTENTION_VARIANTS)
    proj = _projections(block)
    has_bias = proj["k"][1] is not None
    new = KVSelfAttention(
        hidden_size=block.inner_dim,
        num_heads=block.num_heads,
        dropout_rate=float(block.dropout_rate),
        qkv_bias=has_bias,
        save_attn=bool(block.save_attn),
        dim_head=block.dim_head,
        hidden_input_size=block.hidden_input_size,
        causal=bool(block.causal),
        sequence_length=block.sequence_length,
        attention_dtype=block.attention_dtype,
        include_fc=bool(block.include_fc),
        use_combined_linear=bool(block.use_combined_linear),
        attention=attention,
        pos_channels=block.pos_channels if isinstance(block, KVSelfAttention) and block.pos_channels else pos_channels,
    )
    ref = proj["k"][0]
    new.to(device=ref.device, dtype=ref.dtype)
    names = ("q", "k", "v") if attention == "qkv" else ("k", "v")
    sources = [proj.get(n, proj["k"]) for n in names]  # q falls back to k
    with torch.no_grad():
        if new.use_combined_linear:
            fused = new.qkv if attention == "qkv" else new.kv
            fused.weight.copy_(torch.cat([w for w, _ in sources]))
            if has_bias:
                fused.bias.copy_(torch.cat([b for _, b in sources]))
        else:
            for n, (w, b) in zip(names, sources, strict=True):
                layer = getattr(new, f"to_{n}")
                layer.weight.copy_(w)
                if has_bias:
                    layer.bias.copy_(b)
        if isinstance(block.out_proj, nn.Linear):
            new.out_proj.load_state_dict(block.out_proj.state_dict())
        old_pos = getattr(block, "pos_proj", None)
        if new.pos_proj is not None and old_pos is not None:
            new.pos_proj.load_state_dict(old_pos.state_dict())
    if block.rel_positional_embedding is not None:
        new.rel_positional_embedding = block.rel_positional_embedding
        new.input_size = block.input_size
    new.train(block.training)
    return new


def convert_window_attention(block: WindowAttention, attention: str) -> KVWindowAttention:
    """A :class:`KVWindowAttention` of variant ``attention`` with ``block``'s K, V, output and position weights.

    As in :func:`convert_attention`, a ``"qkv"`` target takes the source's query, or its key when it has none.

    Args:
        block: MONAI ``WindowAttention`` (or a ``KVWindowAttention``).
        attention: ``"qkv"`` or ``"kv"``.

    Raises:
        ValueError: if ``attention`` is not a window attention variant.
    """
    inner = block.dim
    fused = block.kv if isinstance(block, KVWindowAttention) and block.attention == "kv" else block.qkv
    rows = {"k": slice(inner, 2 * inner), "v": slice(2 * inner, 3 * inner)}
    if fused.weight.shape[0] == 2 * inner:
        rows = {"k": slice(0, inner), "v": slice(inner, 2 * inner)}
    rows["q"] = slice(0, inner) if fused.weight.shape[0] == 3 * inner else rows["k"]
    has_bias = fused.bias is not None
    new = KVWindowAttention(
        block.dim,
        block.num_heads,
        block.window_size,
        qkv_bias=has_bias,
        attn_drop=block.attn_drop.p,
        proj_drop=block.proj_drop.p,
        attention=attention,
    )
    ref = fused.weight
    new.to(device=ref.device, dtype=ref.dtype)
    names = ("q", "k", "v") if attention == "qkv" else ("k", "v")
    target = new.qkv if attention == "qkv" else new.kv
    with torch.no_grad():
        target.weight.copy_(torch.cat([fused.weight[rows[n]] for n in names]))
        if has_bias:
            target.bias.copy_(torch.cat([fused.bias[rows[n]] for n in names]))
        new.proj.load_state_dict(block.proj.state_dict())
        new.relative_position_bias_table.copy_(block.relative_position_bias_table)
    new.train(block.training)
    return new


#: names of a direct child that is a query (or fused query) projection, for spotting attention kvmonai does not know
QUERY_PROJECTION_NAMES: tuple[str, ...] = (
    "qkv",
    "q",
    "q_proj",
    "to_q",
    "to_qkv",
    "qkv_proj",
    "wq",
    "query",
    "q_linear",
    "in_proj",
)


def _has_query_projection(module: nn.Module) -> bool:
    """Whether ``module`` holds a (fused) query projection with parameters: an attention module of some kind."""
    if any(name in ("in_proj_weight", "q_bias") for name, _ in module.named_parameters(recurse=False)):
        return True  # nn.MultiheadAttention, Swin v2 / EVA style query biases
    return any(
        name in QUERY_PROJECTION_NAMES and any(True for _ in child.parameters())
        for name, child in module.named_children()
    )


def _attention_sites(module: nn.Module) -> list[tuple[nn.Module, str, str, nn.Module, str]]:
    """Every attention module of ``module``'s tree: ``(parent, name, path, child, kind)``, top-down.

    ``kind`` is ``"sablock"``, ``"window"`` (MONAI/kvmonai), ``"timm"`` (convertible or converted timm attention) or
    ``"unsupported"`` (a known unconvertible timm class, or an unknown module with a query projection). The tree is
    not searched below an attention module.
    """
    sites: list[tuple[nn.Module, str, str, nn.Module, str]] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, WindowAttention):
                sites.append((parent, name, path, child, "window"))
            elif isinstance(child, (SABlock, KVSelfAttention)):
                sites.append((parent, name, path, child, "sablock"))
            elif timm_class_name(child) in TIMM_ATTENTION_CLASSES or is_converted_timm_attention(child):
                sites.append((parent, name, path, child, "timm"))
            elif timm_class_name(child) in TIMM_UNSUPPORTED or _has_query_projection(child):
                sites.append((parent, name, path, child, "unsupported"))
            else:
                visit(child, path)

    visit(module, "")
    return sites


def unsupported_attention(module: nn.Module) -> dict[str, str]:
    """The attention modules of ``module`` that :func:`swap_attention` cannot convert: ``{path: reason}``.

    These are timm's cross-attention and factorised attention classes (:data:`TIMM_UNSUPPORTED`, e.g. CrossViT's
    ``CrossAttention`` and CaiT's ``ClassAttn``) and any other module with a query projection that kvmonai does not
    know. ``swap_attention(..., skip_unsupported=True)`` leaves exactly these as they are.

    Args:
        module: the module tree.
    """
    out: dict[str, str] = {}
    for _, _, path, child, kind in _attention_sites(module):
        if kind == "unsupported":
            name = timm_class_name(child)
            reason = TIMM_UNSUPPORTED.get(name, "an attention module with a query projection kvmonai does not know")
            out[path] = f"{name}: {reason}"
    return out


def swap_attention(
    module: nn.Module, attention: str, pos_channels: int = 50, skip_unsupported: bool = False
) -> nn.Module:
    """Replace, in place, every self-attention block of ``module`` by its ``attention`` variant.

    Works on any tree holding MONAI ``SABlock`` modules (``ViT``, ``UNETR``, ``TransformerBlock``...), MONAI Swin
    ``WindowAttention`` modules (``SwinUNETR``; ``"qkv"`` or ``"kv"`` only), kvmonai attention modules and timm's
    attention modules (:data:`~kvmonai.networks.blocks.timm_attention.TIMM_ATTENTION_CLASSES`: ViT/DeiT/CrossViT/PiT,
    Swin v1/v2, Next-ViT, EVA, CaiT, MaxViT, FastViT, EfficientFormer, LeViT, Hiera), keeping their K, V and output
    projection weights (see :func:`convert_attention`, :func:`convert_window_attention` and
    :func:`~kvmonai.networks.blocks.timm_attention.convert_timm_attention`). K and V weights are kept unchanged, so
    loading a QKV checkpoint into a QKV model and then converting it to ``"kv"`` gives the K, V and output weights of
    that checkpoint in the KV model. A ``"qkv"`` target leaves timm's (QKV) modules as they are.

    Everything is checked before anything is replaced: on an error ``module`` is unchanged.

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129.

    Args:
        module: the module tree to modify. A bare attention block cannot be replaced in place: call
            :func:`convert_attention` (or ``convert_timm_attention``) on it instead.
        attention: target variant, one of ``ATTENTION_VARIANTS``.
        pos_channels: channels ``m`` of new KV+Pos corrections.
        skip_unsupported: leave the attention modules that cannot be converted (:func:`unsupported_attention`,
            e.g. CrossViT's cross-attention) as they are instead of raising; they are logged at INFO level.

    Returns:
        ``module`` itself, modified.

    Raises:
        ValueError: if ``attention`` is unknown or not available for an attention module of ``module`` (KV+Pos for
            window attention), or if ``module`` holds no attention block at all.
        TypeError: if ``module`` is itself an attention block, or holds an attention module that cannot be converted
            (named with its path and class) and ``skip_unsupported`` is False.
    """
    check_option("attention", attention, ATTENTION_VARIANTS)
    bare_timm = timm_class_name(module) in TIMM_ATTENTION_CLASSES or is_converted_timm_attention(module)
    if isinstance(module, (SABlock, KVSelfAttention, WindowAttention)) or bare_timm:
        raise TypeError(
            "swap_attention needs a parent module; use convert_attention(block, attention) (convert_timm_attention "
            "for a timm module) for a single block."
        )
    sites = _attention_sites(module)
    if not sites:
        raise ValueError(
            f"{type(module).__name__} holds no SABlock, WindowAttention, KVSelfAttention or timm attention to swap."
        )
    unsupported = unsupported_attention(module)
    if unsupported and not skip_unsupported:
        listed = "; ".join(f"'{path}' ({reason})" for path, reason in unsupported.items())
        raise TypeError(
            f"cannot convert these attention modules of {type(module).__name__} to {attention}: {listed}. Pass "
            "skip_unsupported=True to leave them as they are."
        )
    for _, _, path, child, kind in sites:  # check all before replacing any
        if kind == "window":
            hint = f"The window attention at '{path}' has no KV+Pos. {WINDOW_KVPOS_NOTE}"
            check_option("attention", attention, WINDOW_ATTENTION_VARIANTS, hint)
        elif kind == "timm":
            check_timm_attention(child, attention, path)
    for parent, name, path, child, kind in sites:
        if kind == "window":
            new: nn.Module = convert_window_attention(child, attention)
        elif kind == "sablock":
            new = convert_attention(child, attention, pos_channels)
        elif kind == "timm":
            new = convert_timm_attention(child, attention, pos_channels, path)
        else:
            continue
        if new is not child:
            setattr(parent, name, new)
    if unsupported:
        logger.info("swap_attention left %d attention modules as they are: %s", len(unsupported), unsupported)
    return module
