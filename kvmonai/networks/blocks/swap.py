"""Swap the self-attention of an existing module tree (e.g. a MONAI ``ViT`` or ``UNETR``) for a given variant."""

from __future__ import annotations

import torch
from monai.networks.blocks import SABlock
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, KVSelfAttention
from kvmonai.networks.blocks.window_attention import KVWindowAttention
from kvmonai.utils import check_option

__all__ = ["convert_attention", "convert_window_attention", "swap_attention"]


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


def swap_attention(module: nn.Module, attention: str, pos_channels: int = 50) -> nn.Module:
    """Replace, in place, every self-attention block of ``module`` by a :class:`KVSelfAttention` of ``attention``.

    Works on any tree holding MONAI ``SABlock`` modules (``ViT``, ``UNETR``, ``TransformerBlock``...), MONAI Swin
    ``WindowAttention`` modules (``SwinUNETR``; ``"qkv"`` or ``"kv"`` only) or kvmonai attention modules, keeping
    their K, V and output projection weights (see :func:`convert_attention`, :func:`convert_window_attention`).

    Args:
        module: the module tree to modify. A bare attention block cannot be replaced in place: call
            :func:`convert_attention` on it instead.
        attention: target variant, one of ``ATTENTION_VARIANTS``.
        pos_channels: channels ``m`` of new KV+Pos corrections.

    Returns:
        ``module`` itself, modified.

    Raises:
        ValueError: if ``attention`` is unknown or not available for a window attention of ``module``, or if
            ``module`` holds no attention block at all.
        TypeError: if ``module`` is itself an attention block.
    """
    check_option("attention", attention, ATTENTION_VARIANTS)
    kinds = (SABlock, KVSelfAttention, WindowAttention)
    if isinstance(module, kinds):
        raise TypeError(
            "swap_attention needs a parent module; use convert_attention(block, attention) for a single block."
        )
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, kinds)
    ]
    if not targets:
        raise ValueError(f"{type(module).__name__} holds no SABlock, WindowAttention or KVSelfAttention to swap.")
    for parent, name, child in targets:
        if isinstance(child, WindowAttention):
            new: nn.Module = convert_window_attention(child, attention)
        else:
            new = convert_attention(child, attention, pos_channels)
        setattr(parent, name, new)
    return module
