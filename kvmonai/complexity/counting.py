"""Exact parameter and MAC counts of a model for a given input shape.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2). What is counted:

* matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and convolutions (incl. transposed): one MAC per
  multiply-add; the bias additions of ``addmm``/convolution are not counted;
* ``scaled_dot_product_attention``: ``Q K^T`` and ``A V``, i.e. ``2 n^2 d`` MACs per head and image. Torch's own
  registry covers only the CUDA kernels and counts the CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``)
  as zero; this module registers its formula (and its backward's) so CPU and GPU counts agree.

What is not counted: normalisation layers, activations, softmax, dropout, pooling, interpolation and other
element-wise operations, including KV+Pos's temperature multiply (``n d`` per layer), its per-key bias
(``n (m - m_q)`` per layer, ``m_q`` query-index channels) and the ``h n^2`` additions of that bias to the logits.
These are reported separately by :func:`kvpos_elementwise_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

__all__ = ["Complexity", "count_macs", "count_parameters", "kvpos_elementwise_ops", "measure"]

_aten = torch.ops.aten


def _register_cpu_sdpa() -> None:
    """Register FLOP formulas for the CPU attention kernels (idempotent)."""
    forward = _aten._scaled_dot_product_flash_attention_for_cpu
    backward = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward not in flop_registry:

        @register_flop_formula(forward)
        def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query, key, value)

    if backward not in flop_registry:

        @register_flop_formula(backward)
        def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out, query, key, value)


_register_cpu_sdpa()


@dataclass(frozen=True)
class Complexity:
    """Parameters and forward MACs of one model for one input shape (batch 1)."""

    params: int
    macs: int


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once).

    Args:
        model: the module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: Sequence[int], backward: bool = False) -> int:
    """Multiply-accumulate operations of one forward pass (or forward + backward) of ``model``.

    Args:
        model: the module; run in eval mode for the count, its mode is restored afterwards.
        input_shape: full input shape including the batch dimension, e.g. ``(1, 3, 224, 224)``.
        backward: also count the backward pass of ``output.sum()``.

    Returns:
        MACs (FLOPs / 2) as an integer.

    Raises:
        ValueError: if ``input_shape`` has a non-positive entry.
    """
    if any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be positive, got {tuple(input_shape)}.")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn(*input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            if backward:
                model(x).sum().backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
        if backward:
            model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // 2


def measure(model: nn.Module, input_shape: Sequence[int]) -> Complexity:
    """Parameters and forward MACs of ``model`` for ``input_shape`` (see :func:`count_macs`)."""
    return Complexity(params=count_parameters(model), macs=count_macs(model, input_shape))


def kvpos_elementwise_ops(
    model: nn.Module, num_tokens: Sequence[int] | int | None = None, input_shape: Sequence[int] | None = None
) -> int:
    """Element-wise operations of the KV+Pos corrections of ``model``, which MAC counts leave out.

    Per KV+Pos layer with ``h`` heads, ``d_h`` head size, ``n_q`` queries and ``n_k`` keys: ``h n_q d_h``
    multiplications (temperature), ``n_k (m - m_q)`` MACs (per-key bias) and ``h n_q n_k`` additions (bias on the
    logits); the formula is :meth:`~kvmonai.networks.blocks.KVPositionCorrection.elementwise_ops`. It covers every
    layer that holds that correction: ``KVSelfAttention`` (``n_q = n_k = n``) and CvT's attention (whose keys are
    strided, so ``n_q`` and ``n_k`` differ by ``kv_mode``).

    Args:
        model: the model.
        num_tokens: tokens seen by each ``KVSelfAttention`` KV+Pos layer, in module order, or one number for all.
        input_shape: instead of ``num_tokens``: run one forward pass of this input shape (with batch dimension)
            and take each layer's query and key counts from it; needed for CvT.

    Raises:
        ValueError: if neither or both of ``num_tokens`` and ``input_shape`` are given, if ``num_tokens`` does not
            match the layers, or if the model has CvT KV+Pos layers and only ``num_tokens`` is given.
    """
    from kvmonai.networks.blocks import CvTAttention, KVPositionCorrection

    if (num_tokens is None) == (input_shape is None):
        raise ValueError("pass either num_tokens or input_shape to kvpos_elementwise_ops.")
    layers = [m for m in model.modules() if isinstance(getattr(m, "pos_proj", None), KVPositionCorrection)]
    if input_shape is not None:
        counts: list[tuple[int, int]] = []

        def record(module: nn.Module, args: tuple) -> None:
            if isinstance(module, CvTAttention):
                counts.append(module.token_counts(int(args[1]), int(args[2])))
            else:
                counts.append((int(args[0].shape[1]), int(args[0].shape[1])))

        hooks = [layer.register_forward_pre_hook(record) for layer in layers]
        param = next(model.parameters())
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(torch.randn(*input_shape, device=param.device, dtype=param.dtype))
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        if len(counts) != len(layers):
            raise ValueError(f"{len(layers)} KV+Pos layers but {len(counts)} calls; is one of them reused?")
    else:
        if any(isinstance(m, CvTAttention) for m in layers):
            raise ValueError("the model has CvT KV+Pos layers, whose key counts differ from the query counts: pass "
                             "input_shape instead of num_tokens.")  # fmt: skip
        tokens = [int(num_tokens)] * len(layers) if isinstance(num_tokens, int) else [int(n) for n in num_tokens]
        if len(tokens) != len(layers):
            raise ValueError(f"num_tokens has {len(tokens)} entries for {len(layers)} KV+Pos layers.")
        counts = [(n, n) for n in tokens]
    return sum(
        layer.pos_proj.elementwise_ops(layer.num_heads, layer.dim_head, n_q, n_k)
        for layer, (n_q, n_k) in zip(layers, counts, strict=True)
    )
