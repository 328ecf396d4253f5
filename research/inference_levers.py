#!/usr/bin/env python
"""Per-slice forward time of a paper-preset network under each inference lever, side by side in one process.

Levers: fp32 eager (baseline), bf16 autocast, + channels-last, + exact rewrites (folded BatchNorm, frozen weight
standardisation), TorchScript trace + freeze of the bf16 network, and torch.compile (inductor, freezing) whose
compile time is reported apart. The bundles keep what pays for a single case (see docs/benchmarks.md).

    python research/inference_levers.py --arch setr --batch 16
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from kvmonai.benchmark.timing import gemm_throughput, time_interleaved
from kvmonai.inference import optimize_for_inference
from kvmonai.networks import STUDY_ARCHITECTURES, create


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=STUDY_ARCHITECTURES, default="setr")
    parser.add_argument("--attention", default="kv")
    parser.add_argument("--batch", type=int, default=16, help="slices per call (default: 16, the bundles' value)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes 15-30 s)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    fp32, bf16_gemm = gemm_throughput(torch.float32), gemm_throughput(torch.bfloat16)
    print(f"matrix product 4096x768 @ 768x3072: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16_gemm:.0f} GFLOP/s")
    torch.manual_seed(0)
    base = create(args.arch, args.attention, "paper").eval()
    x = torch.randn(args.batch, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    def call(net, inp, autocast=True):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return net(inp)

        return run

    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    fast = optimize_for_inference(copy.deepcopy(base))
    with torch.inference_mode(), bf16:
        scripted = torch.jit.freeze(torch.jit.trace(fast, x_cl, check_trace=False).eval())
    levers = {
        "fp32 eager": call(base, x, autocast=False),
        "bf16 autocast": call(base, x),
        "bf16 + channels-last": call(cl, x_cl),
        "bf16 + channels-last + rewrites (bundles)": call(fast, x_cl),
        "TorchScript trace+freeze of the above": call(scripted, x_cl),
    }
    if not args.no_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(fast)
        start = time.perf_counter()
        call(compiled, x_cl)()
        print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
        levers["torch.compile (inductor, freezing)"] = call(compiled, x_cl)
    timings = time_interleaved(levers, repeats=args.repeats, warmup=1)
    ref = timings["fp32 eager"].median
    print(f"{args.arch}_{args.attention} paper preset, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, t in timings.items():
        per_slice = t.median / args.batch
        print(f"  {name:45s} {per_slice:7.1f} ms/slice  {ref / t.median:5.2f}x  -> {per_slice * 144 / 1000:5.1f} s/144")


if __name__ == "__main__":
    main()
