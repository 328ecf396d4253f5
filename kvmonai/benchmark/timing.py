"""Side-by-side timing: interleaved repeats, medians with spread, paired ratios, and peak tensor memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "ResultRow",
    "Timing",
    "autocast",
    "device_name",
    "forward_call",
    "gemm_throughput",
    "openvino_gemm_throughput",
    "peak_memory",
    "ratio",
    "synchronize",
    "time_interleaved",
]


class ResultRow:
    """Base of the benchmarks' result dataclasses (one row of their tables)."""

    def as_row(self) -> dict[str, object]:
        """The fields as a dict, in declaration order."""
        return asdict(self)  # the subclasses are dataclasses


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock times in milliseconds: median and the inter-quartile range."""

    times_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr(self) -> float:
        if len(self.times_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[2] - q[0]

    def __str__(self) -> str:
        return f"{self.median:.1f} ± {self.iqr / 2:.1f} ms"


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or ``cpu (N threads)``: what a timing was measured on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` in ``dtype`` on the device's type; disabled (plain fp32) when ``dtype`` is ``None``."""
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def forward_call(net: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> Callable[[], object]:
    """A zero-argument callable running ``net(x)`` in inference mode under :func:`autocast`."""

    def run() -> object:
        with torch.inference_mode(), autocast(x.device, dtype):
            return net(x)

    return run


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu"
) -> dict[str, Timing]:
    """Time several callables round-robin (a, b, c, a, b, c, ...), so drifts of a shared machine hit all alike.

    Args:
        fns: name -> zero-argument callable to time.
        repeats: timed rounds.
        warmup: untimed rounds first (allocator, oneDNN primitive caches, lazy initialisation).
        device: device to synchronise before reading the clock.

    Returns:
        name -> :class:`Timing` over the ``repeats`` rounds.

    Raises:
        ValueError: if ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: Timing(tuple(t)) for name, t in times.items()}


def ratio(a: Timing, b: Timing) -> tuple[float, float, float]:
    """Paired ratio a/b of two interleaved timings: (median, min, max) over the rounds."""
    pairs = [x / y for x, y in zip(a.times_ms, b.times_ms, strict=True)]
    return statistics.median(pairs), min(pairs), max(pairs)


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Peak bytes of tensors alive while ``fn`` runs, beyond those alive before (parameters, inputs excluded).

    CUDA: the caching allocator's peak. CPU: tensors are tracked through torch's ``MemTracker`` (a dispatch mode,
    available in torch >= 2.4); ``None`` when it is not available. Run it apart from timings: tracking slows ``fn``.

    Args:
        fn: zero-argument callable.
        device: where ``fn`` allocates.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before)
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    tracker = MemTracker()
    with tracker:
        fn()
    peak = tracker.get_tracker_snapshot("peak")
    total = sum(stats.get("Total", 0) for d, stats in peak.items() if str(d) == str(dev.type) or str(d) == str(dev))
    # parameters and buffers are tracked when first touched; count what the call adds on top of them
    params = sum(
        stats.get(kind, 0)
        for d, stats in peak.items()
        if str(d) in (str(dev.type), str(dev))
        for kind in stats
        if str(kind) in ("_MemRefType.PARAM", "_MemRefType.BUFFER")
    )
    return int(total - params)


def gemm_throughput(dtype: torch.dtype, m: int = 4096, k: int = 768, n: int = 3072, repeats: int = 20) -> float:
    """GFLOP/s of a ViT-B MLP-sized torch matrix product: the ceiling the networks' linear layers can reach."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def openvino_gemm_throughput(
    precision: str, m: int = 4096, k: int = 768, n: int = 3072, repeats: int = 20, seed: int = 0
) -> float:
    """GFLOP/s of the same matrix product on OpenVINO's CPU plugin: ``"f32"``, ``"bf16"`` or ``"int8"``.

    ``"int8"`` quantises the one-layer model with NNCF (activations and weights int8, as in a quantised network);
    ``"bf16"`` on a CPU without native bf16 runs in fp32, since OpenVINO does not emulate it.

    Raises:
        ValueError: for another precision.
    """
    import numpy as np
    import openvino as ov

    if precision not in ("f32", "bf16", "int8"):
        raise ValueError(f"precision must be 'f32', 'bf16' or 'int8', got {precision!r}.")
    rng = np.random.default_rng(seed)
    x = ov.opset13.parameter([m, k], ov.Type.f32, name="x")
    w = ov.opset13.constant(rng.standard_normal((k, n)).astype(np.float32))
    model = ov.Model([ov.opset13.matmul(x, w, False, False)], [x], "gemm")
    data = rng.standard_normal((m, k)).astype(np.float32)
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([data]), subset_size=1)
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    for _ in range(3):
        compiled(data)
    start = time.perf_counter()
    for _ in range(repeats):
        compiled(data)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9
