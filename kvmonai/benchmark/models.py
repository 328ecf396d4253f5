"""Whole-network benchmark: size, MACs, latency, throughput, training step and peak memory of every pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvmonai.benchmark.timing import (
    ResultRow,
    autocast,
    device_name,
    forward_call,
    peak_memory,
    ratio,
    time_interleaved,
)

__all__ = ["PEAK_BF16_TFLOPS", "ModelResult", "benchmark_models", "peak_tflops_of"]

#: dense bf16 tensor-core peak (TFLOP/s) by GPU name fragment, from the vendors' data sheets (SXM parts)
PEAK_BF16_TFLOPS: dict[str, float] = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops_of(device: str, dtype: torch.dtype | None) -> float | None:
    """The data-sheet bf16/fp16 peak of a known CUDA GPU; ``None`` for CPUs, fp32 or unknown GPUs."""
    if torch.device(device).type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


@dataclass
class ModelResult(ResultRow):
    """One architecture/attention pair on one device. Times in ms (median and IQR over interleaved repeats); ratios
    are paired against the QKV twin measured in the same rounds (1.0 for QKV itself)."""

    device: str
    arch: str
    attention: str
    preset: str
    img_size: int
    params: int
    macs: int
    latency_ms: float
    latency_iqr_ms: float
    throughput_batch: int
    throughput_slices_s: float
    train_batch: int
    train_step_ms: float
    train_step_iqr_ms: float
    train_slices_s: float
    train_tflops: float
    mfu: float | None
    peak_forward_mb: float | None
    peak_train_mb: float | None
    latency_ratio: float
    latency_ratio_min: float
    latency_ratio_max: float
    throughput_ratio: float
    train_ratio: float


def _train_step(net: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], object]:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    target = torch.rand(x.shape[0], 3, *x.shape[2:], device=x.device).round()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def run() -> object:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, dtype):
            loss = loss_fn(net(x).float(), target)
        loss.backward()
        opt.step()
        return loss

    return run


def benchmark_models(
    archs: Sequence[str],
    preset: str = "small",
    img_size: int | None = None,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    throughput_batch: int = 16,
    train_batch: int = 8,
    in_channels: int = 3,
    dtype: torch.dtype | None = None,
    memory: bool = True,
    progress: bool = True,
    peak_tflops: float | None = None,
) -> list[ModelResult]:
    """Measure every attention variant of each architecture, the variants interleaved round by round.

    Long on purpose: one loop builds, times and records every pair side by side, so that the round-robin order
    that makes the ratios paired stays visible in one place.

    Per architecture the QKV, KV (and KV+Pos) networks are built with the same seed, then for each measurement
    (latency at batch 1, throughput at ``throughput_batch``, a training step at ``train_batch``) the variants run
    round-robin for ``warmup + repeats`` rounds. Peak memory is taken in a separate, untimed pass.

    Args:
        archs: architectures (``kvmonai.networks.STUDY_ARCHITECTURES``).
        preset: network sizes.
        img_size: square input side (default: the preset's).
        device: ``"cpu"`` or a CUDA device.
        repeats: timed rounds per measurement.
        warmup: untimed rounds first.
        throughput_batch: batch of the throughput measurement.
        train_batch: batch of the training step (AdamW, BCE loss).
        in_channels: input channels (3: the bundles' 2.5D slices).
        dtype: autocast dtype (``None``: fp32).
        memory: also measure peak memory.
        progress: show a tqdm progress bar.
        peak_tflops: the device's peak dense TFLOP/s at the measured precision, for the model FLOP utilisation
            (MFU = forward + backward FLOPs of a step / step time / peak); default: :func:`peak_tflops_of` (known
            GPUs in bf16), else no MFU.

    Returns:
        one :class:`ModelResult` per pair.

    Raises:
        ValueError: for an unknown architecture or preset (from :func:`kvmonai.networks.create`).
    """
    from tqdm.auto import tqdm

    from kvmonai.complexity import count_macs, count_parameters
    from kvmonai.networks import PRESET_IMG_SIZE, attentions_for, create

    size = img_size or PRESET_IMG_SIZE[preset]
    results: list[ModelResult] = []
    jobs = [(a, list(attentions_for(a))) for a in archs]
    bar = tqdm(total=sum(len(v) for _, v in jobs), unit="pair", desc=f"models {device}", disable=not progress)
    for arch, variants in jobs:
        nets: dict[str, torch.nn.Module] = {}
        for att in variants:
            torch.manual_seed(0)
            nets[att] = create(arch, att, preset, in_channels=in_channels, img_size=size).to(device)
        x1 = torch.randn(1, in_channels, size, size, device=device)
        xb = torch.randn(throughput_batch, in_channels, size, size, device=device)
        xt = torch.randn(train_batch, in_channels, size, size, device=device)
        for net in nets.values():
            net.eval()
        latency = time_interleaved({a: forward_call(n, x1, dtype) for a, n in nets.items()}, repeats, warmup, device)
        through = time_interleaved({a: forward_call(n, xb, dtype) for a, n in nets.items()}, repeats, warmup, device)
        for net in nets.values():
            net.train()
        steps = {a: _train_step(n, xt, dtype) for a, n in nets.items()}
        train = time_interleaved(steps, repeats, warmup, device)
        for att, net in nets.items():
            peak_fwd = peak_train = None
            if memory:
                net.eval()
                peak_fwd = peak_memory(forward_call(net, xb, dtype), device)
                net.train()
                peak_train = peak_memory(steps[att], device)
            lat_r = ratio(latency[att], latency[variants[0]])
            step_macs = count_macs(net, (train_batch, in_channels, size, size), backward=True)
            achieved = 2 * step_macs / (train[att].median / 1000) / 1e12
            peak = peak_tflops if peak_tflops is not None else peak_tflops_of(device, dtype)
            results.append(
                ModelResult(
                    device=device_name(device),
                    arch=arch,
                    attention=att,
                    preset=preset,
                    img_size=size,
                    params=count_parameters(net),
                    macs=count_macs(net.eval(), (1, in_channels, size, size)),
                    latency_ms=latency[att].median,
                    latency_iqr_ms=latency[att].iqr,
                    throughput_batch=throughput_batch,
                    throughput_slices_s=1000 * throughput_batch / through[att].median,
                    train_batch=train_batch,
                    train_step_ms=train[att].median,
                    train_step_iqr_ms=train[att].iqr,
                    train_slices_s=1000 * train_batch / train[att].median,
                    train_tflops=achieved,
                    mfu=None if not peak else achieved / peak,
                    peak_forward_mb=None if peak_fwd is None else peak_fwd / 2**20,
                    peak_train_mb=None if peak_train is None else peak_train / 2**20,
                    latency_ratio=lat_r[0],
                    latency_ratio_min=lat_r[1],
                    latency_ratio_max=lat_r[2],
                    throughput_ratio=ratio(through[att], through[variants[0]])[0],
                    train_ratio=ratio(train[att], train[variants[0]])[0],
                )
            )
            bar.update(1)
        del nets
    bar.close()
    return results
