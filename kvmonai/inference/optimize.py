"""Inference-time rewrites of a trained network that keep its function: folding and memory layout.

Each rewrite is exact up to floating-point rounding and is measured in ``docs/benchmarks.md`` (kept only where it
pays): BatchNorm folded into the preceding convolution of MONAI :class:`~monai.networks.blocks.Convolution` blocks
(SETR decoders, CvT projections), in-place activations in those blocks, frozen weight standardisation (TransUNet's
ResNetV2 convolutions compute it on every call in training), and channels-last weights for oneDNN convolutions.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kvmonai.utils import as_flag

__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "cpu_has_fast_bf16",
    "fold_batch_norms",
    "freeze_for_inference",
    "inplace_activations",
    "optimize_for_inference",
]

#: precisions accepted by :func:`autocast_dtype` and the inference bundles' ``precision`` setting
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 natively in oneDNN (AVX512-BF16 or AMX): bf16 then pays several times over fp32.

    ``precision: auto`` (:func:`autocast_dtype`) picks bf16 on the CPU only then; ``kvmonai benchmark`` names it in
    its machine description.

    Returns:
        ``False`` also for torch builds without oneDNN.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # builds without oneDNN
        return False


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; ``None`` means plain fp32.

    ``"auto"`` picks bf16 where the hardware runs it natively (CPUs with AVX512-BF16/AMX, CUDA GPUs with bf16
    support) and fp32 elsewhere, so a machine without fast bf16 is never slowed down by emulation.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the network runs.

    Raises:
        ValueError: for an unknown ``precision``, or ``"fp16"`` on a CPU (use ``"bf16"`` there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if kind != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; on a CPU use 'bf16' or 'auto'.")
        return torch.float16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if kind == "cpu" and cpu_has_fast_bf16() else None


def fold_batch_norms(network: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution in a MONAI ``Convolution`` block into its weights.

    Only blocks whose ADN applies the norm first (MONAI's default ``"NDA"`` ordering) are folded; the BatchNorm is
    replaced by ``nn.Identity``. The network must be in eval mode (running statistics are folded).

    Args:
        network: the network, changed in place.

    Returns:
        the number of folded BatchNorms.

    Raises:
        ValueError: if the network is in training mode.
    """
    if network.training:
        raise ValueError("fold_batch_norms needs network.eval(): training-mode BatchNorm uses batch statistics.")
    folded = 0
    for block in network.modules():
        if not isinstance(block, Convolution) or not hasattr(block, "adn"):
            continue
        adn_children = list(block.adn.named_children())
        if not adn_children or adn_children[0][0] != "N" or not isinstance(adn_children[0][1], _BN):
            continue
        transposed = isinstance(block.conv, nn.modules.conv._ConvTransposeNd)
        block.conv = fuse_conv_bn_eval(block.conv, block.adn.N, transpose=transposed)
        block.adn.N = nn.Identity()
        folded += 1
    return folded


def inplace_activations(network: nn.Module) -> int:
    """Make the activations of MONAI ``Convolution`` blocks work in place (ReLU, LeakyReLU, ELU...).

    Inside such a block the activation's input is produced by the block itself (the convolution, or its norm) and
    read by nothing else, so overwriting it is safe; it saves one full-size tensor per block (the decoders' largest).
    For inference only: in place activations can break a backward pass.

    Args:
        network: the network, changed in place.

    Returns:
        the number of activations switched.
    """
    switched = 0
    for block in network.modules():
        act = getattr(getattr(block, "adn", None), "A", None) if isinstance(block, Convolution) else None
        if act is not None and hasattr(act, "inplace") and not act.inplace:
            act.inplace = True
            switched += 1
    return switched


def freeze_for_inference(network: nn.Module) -> int:
    """Replace every submodule that offers ``inference_module()`` with the plain module it returns.

    Networks mark training-time reparameterisations this way (e.g. TransUNet's weight-standardised convolutions
    return an ``nn.Conv2d`` holding the standardised weights).

    Args:
        network: the network, changed in place.

    Returns:
        the number of replaced submodules.
    """
    replaced = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            make = getattr(child, "inference_module", None)
            if callable(make):
                setattr(parent, name, make())
                replaced += 1
    return replaced


def optimize_for_inference(network: nn.Module, fuse: bool = True, channels_last: bool = True) -> nn.Module:
    """Put a trained 2D network in eval mode and apply the inference rewrites; returns the same object.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped).
        fuse: fuse BatchNorms into the preceding convolutions, freeze training-time reparameterisations and run
            block activations in place (the bundles' ``fuse`` setting).
        channels_last: store 4D weights channels-last (oneDNN's preferred layout on CPUs).

    Raises:
        ValueError: when ``fuse`` or ``channels_last`` is not a boolean (or the strings true/false).
    """
    fuse, channels_last = as_flag("fuse", fuse), as_flag("channels_last", channels_last)
    net = getattr(network, "module", network)
    net.eval()
    if fuse:
        freeze_for_inference(net)
        fold_batch_norms(net)
        inplace_activations(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return network
