#!/usr/bin/env python
"""Training-step time of every architecture/attention pair at the small preset (128x128, batch 8, AdamW, 2 threads).

Usage: python research/preset_step_times.py   (prints arch,attention,median seconds of steps 3-7)

A quick check that the small preset fits a 2-core CPU; for careful speed comparisons use a benchmark that
interleaves the variants and reports spread.
"""

from __future__ import annotations

import statistics
import time

import torch

from kvmonai.networks import create, pairs


def main() -> None:
    torch.set_num_threads(2)
    x = torch.randn(8, 3, 128, 128)
    y = (torch.rand(8, 3, 128, 128) > 0.8).float()
    print("arch,attention,step_seconds")
    for arch, attention in pairs():
        torch.manual_seed(0)
        net = create(arch, attention, "small", img_size=128)
        opt = torch.optim.AdamW(net.parameters())
        times = []
        for _ in range(7):
            start = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - start)
        print(f"{arch},{attention},{statistics.median(times[2:]):.3f}")


if __name__ == "__main__":
    main()
