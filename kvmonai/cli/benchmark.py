"""``kvmonai benchmark``: speed and memory of every pair, the attention block's scaling, whole-case inference."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kvmonai.paths import bundles_dir
from kvmonai.utils import int_list

__all__ = ["add_arguments", "run"]

SUITES = ("models", "attention", "case")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai benchmark``."""
    from kvmonai.benchmark import SETTINGS
    from kvmonai.networks import EXTRA_ARCHITECTURES, PRESETS, STUDY_ARCHITECTURES

    parser.add_argument("--suites", nargs="+", choices=SUITES, default=["models", "attention"],
                        help="what to measure (default: models attention; 'case' adds whole-case inference of the "
                        "paper-preset KV bundles, about 6 min on 2 CPU cores)")  # fmt: skip
    parser.add_argument("--archs", nargs="+", choices=STUDY_ARCHITECTURES + EXTRA_ARCHITECTURES,
                        default=list(STUDY_ARCHITECTURES), help="architectures (default: the five of the study; "
                        "the timm backbones crossvit, swin and nextvit by name)")  # fmt: skip
    parser.add_argument("--preset", default="small", choices=PRESETS, help="network sizes of the models suite "
                        "(default: small)")  # fmt: skip
    parser.add_argument("--img-size", type=int, help="input side of the models suite (default: the preset's)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="cpu, cuda, or all (default: every device present)")  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help="models/attention suites under bf16 autocast")
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--batch", type=int, default=16, help="throughput batch (default: 16)")
    parser.add_argument("--train-batch", type=int, default=8, help="training-step batch (default: 8)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s for the MFU column "
                        "(default: data-sheet bf16 peak of known GPUs with --bf16; none on CPU)")  # fmt: skip
    parser.add_argument("--tokens", type=int_list("--tokens", minimum=1), default=None,
                        help="token counts of the attention suite (default: 196,576,1024,2304,4096)")  # fmt: skip
    parser.add_argument("--hidden", type=int, default=768, help="attention suite: hidden size (default: 768)")
    parser.add_argument("--heads", type=int, default=12, help="attention suite: heads (default: 12)")
    parser.add_argument("--case-preset", default="paper", choices=PRESETS, help="case suite: network sizes "
                        "(default: paper)")  # fmt: skip
    parser.add_argument("--case-attention", nargs="+", default=["kv"], choices=("qkv", "kv", "kvpos"),
                        help="case suite: attention variants (default: kv)")  # fmt: skip
    parser.add_argument("--case-settings", nargs="+", choices=list(SETTINGS), default=["fp32", "fast"],
                        help="case suite: settings, the first is the reference (default: fp32 fast; "
                        "'bf16' and 'bf16+cl' isolate the levers; 'openvino', 'openvino-int8': OpenVINO)")  # fmt: skip
    parser.add_argument("--case-slices", type=int, default=144, help="case suite: slices (default: 144)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"), help="output folder "
                        "(default: results/benchmark)")  # fmt: skip
    parser.add_argument("--bundles", type=Path, default=None, help="bundles folder (default: "
                        "$KVMONAI_BUNDLES, else the checkout's bundles/)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the chosen suites and write the report."""
    import torch

    from kvmonai.benchmark import (
        DEFAULT_TOKENS,
        benchmark_attention,
        benchmark_case,
        benchmark_models,
        write_benchmark_report,
    )
    from kvmonai.networks import attentions_for

    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0 (got {args.repeats}, {args.warmup}).")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu.")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    dtype = torch.bfloat16 if args.bf16 else None
    progress = not args.no_progress
    models, attention, case = [], [], []
    for device in devices:
        if "models" in args.suites:
            models += [
                r.as_row()
                for r in benchmark_models(
                    args.archs, args.preset, args.img_size, device, args.repeats, args.warmup, args.batch,
                    args.train_batch, dtype=dtype, memory=not args.no_memory, progress=progress,
                    peak_tflops=args.peak_tflops if device != "cpu" else None,
                )
            ]  # fmt: skip
        if "attention" in args.suites:
            attention += [
                r.as_row()
                for r in benchmark_attention(
                    args.tokens or DEFAULT_TOKENS, args.hidden, args.heads, 1, device, args.repeats, args.warmup,
                    progress, dtype,
                )
            ]  # fmt: skip
    if "case" in args.suites:
        bundles = args.bundles or bundles_dir()
        for variant in args.case_attention:
            archs = [a for a in args.archs if variant in attentions_for(a)]
            case += [
                r.as_row()
                for r in benchmark_case(
                    archs, variant, args.case_preset, args.case_settings, args.out / "case", bundles,
                    args.case_slices, devices[-1], progress,
                )
            ]  # fmt: skip
    command = "kvmonai " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    report = write_benchmark_report(args.out, command, models, attention, case)
    sys.stdout.write(report.read_text())
    sys.stdout.write(f"\nwrote {report} and the CSVs/charts beside it\n")
    return 0
