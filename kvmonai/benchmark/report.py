"""Benchmark outputs: CSV per suite, a markdown report with the machine and the command, and charts."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmonai.utils import csv_text, markdown_table, pyplot, save_figure, write_text_atomic

__all__ = ["machine_description", "write_benchmark_report"]


def machine_description() -> str:
    """CPU model, cores, torch version and (when present) the GPU: what a timing means depends on all of them."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from kvmonai.inference import cpu_has_fast_bf16

    parts = [
        f"{cpu}, {torch.get_num_threads()} threads",
        "native bf16 (oneDNN)" if cpu_has_fast_bf16() else "no native bf16",
        f"torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def _pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f} %"


def _models_md(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "device", "pair", "params", "GMACs", "latency b1 (ms)", "vs QKV (min–max)", "slices/s (b16)", "vs QKV",
        "train step (ms)", "vs QKV", "train TFLOP/s (MFU)", "peak fwd / train (MiB)",
    )  # fmt: skip
    cells = []
    for r in rows:
        twin = r["attention"] == "qkv"
        latency_vs = f"{_pct(r['latency_ratio'])} ({_pct(r['latency_ratio_min'])}…{_pct(r['latency_ratio_max'])})"
        mfu = "" if r["mfu"] is None else f" ({100 * r['mfu']:.0f} %)"
        cells.append(
            (
                r["device"],
                f"{r['arch']}_{r['attention']}",
                f"{r['params']:,}",
                f"{r['macs'] / 1e9:.3f}",
                f"{r['latency_ms']:.1f} ± {r['latency_iqr_ms'] / 2:.1f}",
                "–" if twin else latency_vs,
                f"{r['throughput_slices_s']:.1f}",
                "–" if twin else _pct(1 / r["throughput_ratio"]),
                f"{r['train_step_ms']:.0f} ± {r['train_step_iqr_ms'] / 2:.0f}",
                "–" if twin else _pct(r["train_ratio"]),
                f"{r['train_tflops']:.3f}{mfu}",
                "n/a" if r["peak_forward_mb"] is None else f"{r['peak_forward_mb']:.0f} / {r['peak_train_mb']:.0f}",
            )
        )
    return markdown_table(header, cells, ["left"] * 2 + ["right"] * 10)


def _attention_md(rows: Sequence[dict[str, Any]]) -> str:
    header = ("device", "n", "variant", "forward (ms)", "fwd vs QKV", "fwd vs KV", "fwd+bwd (ms)", "vs QKV", "vs KV")
    cells = [
        (
            r["device"],
            r["tokens"],
            r["attention"],
            f"{r['forward_ms']:.2f}",
            _pct(r["forward_vs_qkv"]),
            _pct(r["forward_vs_kv"]),
            f"{r['backward_ms']:.2f}",
            _pct(r["backward_vs_qkv"]),
            _pct(r["backward_vs_kv"]),
        )
        for r in rows
    ]
    return markdown_table(header, cells, ["left", "right", "left"] + ["right"] * 6)


def _case_md(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "bundle", "setting", "runtime", "precision", "channels-last", "fused", "case (s)", "ms/slice", "speed-up",
        "mask Dice vs first",
    )  # fmt: skip
    cells = [
        (
            f"{r['arch']}_{r['attention']} ({r['preset']})",
            r["setting"],
            r.get("runtime", "torch"),
            r["precision"],
            "yes" if r["channels_last"] else "no",
            "yes" if r["fuse"] else "no",
            f"{r['case_s']:.1f}",
            f"{r['per_slice_ms']:.1f}",
            f"{r['speedup']:.2f}×",
            "–" if r["mask_dice_vs_fp32"] is None else f"{r['mask_dice_vs_fp32']:.4f}",
        )
        for r in rows
    ]
    return markdown_table(header, cells, ["left"] * 6 + ["right"] * 4)


def _plot_models(rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    others = [r for r in rows if r["attention"] != "qkv"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    labels = [f"{r['arch']}_{r['attention']}\n{r['device'].split(' (')[0]}" for r in others]
    for ax, key, title in zip(
        axes,
        ("latency_ratio", "throughput_ratio", "train_ratio"),
        ("latency (batch 1)", "time per batch (throughput)", "training step"),
        strict=True,
    ):
        values = [100 * (r[key] - 1) for r in others]
        ax.barh(labels, values, color=["tab:blue" if r["attention"] == "kv" else "tab:orange" for r in others])
        ax.axvline(0, color="black", lw=0.8)
        ax.set(title=title, xlabel="time vs QKV twin (%)")
    axes[0].invert_yaxis()
    fig.suptitle("KV (blue) and KV+Pos (orange) vs QKV, interleaved medians; negative = faster")
    save_figure(fig, path)


def _plot_attention(rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for device in dict.fromkeys(r["device"] for r in rows):
        for att, style in (("qkv", "o-"), ("kv", "s-"), ("kvpos", "^--")):
            sel = [r for r in rows if r["attention"] == att and r["device"] == device]
            n = [r["tokens"] for r in sel]
            axes[0].loglog(n, [r["forward_ms"] for r in sel], style, label=f"{att} ({device.split(' (')[0]})")
            axes[1].loglog(n, [r["backward_ms"] for r in sel], style, label=f"{att} ({device.split(' (')[0]})")
    tokens = sorted({r["tokens"] for r in rows})
    for ax, title in zip(axes, ("forward", "forward + backward"), strict=True):
        ax.set(title=f"attention block, {title}", xlabel="tokens n", ylabel="ms")
        ax.set_xticks(tokens, [str(n) for n in tokens])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)


def _plot_case(rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    bundles = list(dict.fromkeys(f"{r['arch']}_{r['attention']}" for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        values = [
            next((r["case_s"] for r in rows if f"{r['arch']}_{r['attention']}" == b and r["setting"] == setting), 0)
            for b in bundles
        ]
        ax.bar([j + i * width for j in range(len(bundles))], values, width, label=setting)
    ax.axhline(10, color="red", ls="--", lw=1, label="10 s goal")
    ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(bundles))], bundles)
    ax.set(ylabel="seconds per case", title="whole-case inference (file to file)")
    ax.legend()
    save_figure(fig, path)


def write_benchmark_report(
    out: str | Path,
    command: str,
    models: Sequence[dict[str, Any]] = (),
    attention: Sequence[dict[str, Any]] = (),
    case: Sequence[dict[str, Any]] = (),
    date: str | None = None,
) -> Path:
    """Write ``report.md``, one CSV and one chart per suite that ran; returns the report path.

    Args:
        out: output folder (created).
        command: the command line that produced the results (quoted in the report).
        models: rows of :class:`~kvmonai.benchmark.models.ModelResult`.
        attention: rows of :class:`~kvmonai.benchmark.attention.AttentionResult`.
        case: rows of :class:`~kvmonai.benchmark.case.CaseResult`.
        date: date line (default: today).
    """
    import datetime

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# kvmonai benchmark",
        "",
        f"- command: `{command}`",
        f"- machine: {machine_description()}",
        f"- date: {date or datetime.date.today().isoformat()}",
        "- times: medians over interleaved rounds (± half the inter-quartile range); ratios are paired per round "
        "against the QKV twin measured in the same rounds.",
        "",
    ]
    if models:
        write_text_atomic(out / "models.csv", csv_text(models))
        _plot_models(models, out / "models.png")
        lines += ["## Networks", "", _models_md(models), "", "![networks](models.png)", ""]
    if attention:
        write_text_atomic(out / "attention.csv", csv_text(attention))
        _plot_attention(attention, out / "attention.png")
        lines += ["## Attention block", "", _attention_md(attention), "", "![attention](attention.png)", ""]
    if case:
        write_text_atomic(out / "case.csv", csv_text(case))
        _plot_case(case, out / "case.png")
        lines += ["## Whole-case inference", "", _case_md(case), "", "![case](case.png)", ""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report
