#!/usr/bin/env python
"""Whole-case inference per runtime: torch fp32, torch fast, OpenVINO (bf16 where native) and OpenVINO int8.

Measures the machine's matrix-product ceilings first (torch fp32/bf16, OpenVINO f32/bf16/int8, a ViT-B MLP-sized
product), then runs ``kvmonai benchmark --suites case`` for the chosen bundles under the four settings, in one
process, and writes a markdown table with seconds per case and each case's FLOPs over its time as a fraction of the
ceiling of the precision it ran in.

    python research/runtime_table.py --archs setr --attentions qkv kv kvpos --out docs/measured/benchmark_runtime.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from kvmonai.benchmark.case import benchmark_case
from kvmonai.benchmark.timing import gemm_throughput, openvino_gemm_throughput
from kvmonai.complexity import count_macs
from kvmonai.networks import PRESET_IMG_SIZE, STUDY_ARCHITECTURES, attentions_for, create
from kvmonai.utils import csv_text, markdown_table, write_text_atomic

SETTINGS = ("fp32", "fast", "openvino", "openvino-int8")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", choices=STUDY_ARCHITECTURES, default=list(STUDY_ARCHITECTURES))
    parser.add_argument("--attentions", nargs="+", default=["kv"], choices=("qkv", "kv", "kvpos"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                        help="case settings; 'fast' is the reference of the ratios (default: all four)")  # fmt: skip
    parser.add_argument("--slices", type=int, default=144, help="slices of the synthetic case (default: 144)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark/runtime.md"))
    parser.add_argument("--workdir", type=Path, default=Path("results/benchmark/runtime"))
    args = parser.parse_args()

    start = time.perf_counter()
    from kvmonai.inference import cpu_has_fast_bf16

    ceilings = {
        "torch fp32": gemm_throughput(torch.float32),
        # emulated bf16 (no AVX512-BF16/AMX) runs below 1 GFLOP/s and no bundle uses it there: a 16x smaller product
        "torch bf16": gemm_throughput(torch.bfloat16)
        if cpu_has_fast_bf16()
        else gemm_throughput(torch.bfloat16, m=256, repeats=2),
        "openvino f32": openvino_gemm_throughput("f32"),
        "openvino bf16": openvino_gemm_throughput("bf16"),
        "openvino int8": openvino_gemm_throughput("int8"),
    }
    size = PRESET_IMG_SIZE["paper"]
    table: list[dict] = []
    for attention in args.attentions:  # one bundle at a time, the table rewritten after each
        for arch in [a for a in args.archs if attention in attentions_for(a)]:
            net = create(arch, attention, "paper", img_size=size).eval()
            gmacs = count_macs(net, (1, 3, size, size)) / 1e9
            del net
            for result in benchmark_case([arch], attention, "paper", args.settings, args.workdir, slices=args.slices):
                table.append(_with_ceiling(result.as_row(), gmacs, ceilings))
            _write(table, ceilings, args, start)
    return 0


def _with_ceiling(r: dict, gmacs: float, ceilings: dict[str, float]) -> dict:
    """``r`` plus its GMACs per slice and the time its matrix FLOPs take at the ceiling of its precision."""
    ceiling_name = {
        ("torch", "fp32"): "torch fp32",
        ("torch", "bfloat16"): "torch bf16",
        ("openvino", "fp32"): "openvino f32",
        ("openvino", "bf16"): "openvino bf16",
        ("openvino", "int8"): "openvino int8",
    }[(r["runtime"], r["precision"])]
    at_ceiling = 2 * gmacs * 1e9 * r["slices"] / (ceilings[ceiling_name] * 1e9)
    r.update(gmacs_per_slice=round(gmacs, 3), ceiling=ceiling_name)
    r.update(seconds_at_ceiling=round(at_ceiling, 2), fraction_of_ceiling=round(at_ceiling / r["case_s"], 3))
    return r


def _ratio(reference: float | None, seconds: float) -> str:
    return "–" if reference is None else f"{reference / seconds:.2f}×"


def _write(table: list[dict], ceilings: dict[str, float], args: argparse.Namespace, start: float) -> None:
    fast = {(r["arch"], r["attention"]): r["case_s"] for r in table if r["setting"] == "fast"}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {_cpu()} ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}; command `python {' '.join(sys.argv)}` ({time.perf_counter() - start:.0f} s).",
        "",
        "Matrix-product ceilings (4096x768 @ 768x3072): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items())
        + ".",
        "",
        markdown_table(
            [
                "bundle",
                "setting",
                "runtime / precision",
                "s per case",
                "vs torch fast",
                "GMACs/slice",
                "s at ceiling",
                "fraction of ceiling",
            ],  # fmt: skip
            [
                [
                    f"`{r['arch']}_{r['attention']}`",
                    r["setting"],
                    f"{r['runtime']} {r['precision']}",
                    f"{r['case_s']:.1f}",
                    _ratio(fast.get((r["arch"], r["attention"])), r["case_s"]),
                    f"{r['gmacs_per_slice']:.1f}",
                    f"{r['seconds_at_ceiling']:.1f} ({r['ceiling']})",
                    f"{r['fraction_of_ceiling']:.2f}",
                ]
                for r in table
            ],
            ["left", "left", "left", "right", "right", "right", "right", "right"],
        ),
        "",
    ]
    write_text_atomic(args.out, "\n".join(lines))
    write_text_atomic(args.out.with_suffix(".csv"), csv_text(table))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
