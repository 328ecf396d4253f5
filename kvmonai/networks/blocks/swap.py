"""Swap the self-attention of an existing module tree (e.g. a MONAI ``ViT`` or ``UNETR``) for a given variant."""

from __future__ import annotations

import torch
from monai.networks.blocks import SABlock
from torch import nn

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, KVSelfAttention

__all__ = ["swap_attention", "convert_attention"]


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
    if attention not in ATTENTION_VARIANTS:
        raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {attention!r}.")
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


def swap_attention(module: nn.Module, attention: str, pos_channels: int = 50) -> nn.Module:
    """Replace, in place, every self-attention block of ``module`` by a :class:`KVSelfAttention` of ``attention``.

    Works on any tree holding MONAI ``SABlock`` modules (``ViT``, ``UNETR``, ``TransformerBlock``...) or kvmonai
    attention modules, keeping their K, V and output projection weights (see :func:`convert_attention`).

    Args:
        module: the module tree to modify. A bare attention block cannot be replaced in place: call
            :func:`convert_attention` on it instead.
        attention: target variant, one of ``ATTENTION_VARIANTS``.
        pos_channels: channels ``m`` of new KV+Pos corrections.

    Returns:
        ``module`` itself, modified.

    Raises:
        ValueError: if ``attention`` is unknown, or if ``module`` holds no self-attention block at all.
        TypeError: if ``module`` is itself an attention block.
    """
    if attention not in ATTENTION_VARIANTS:
        raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {attention!r}.")
    if isinstance(module, (SABlock, KVSelfAttention)):
        raise TypeError("swap_attention needs a parent module; use convert_attention(block, attention) for a block.")
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, (SABlock, KVSelfAttention))
    ]
    if not targets:
        raise ValueError(f"{type(module).__name__} holds no SABlock or KVSelfAttention to swap.")
    for parent, name, child in targets:
        setattr(parent, name, convert_attention(child, attention, pos_channels))
    return module
