#!/usr/bin/env python
"""Training step time fp32 vs bf16 autocast, side by side, and whether the loss curves agree.

For each architecture (KV variant, plus the CNN reference) at the study's setting (preset small, 64x64, batch of
2 volumes x 4 slices drawn by the bundle's own training pipeline):

* step time: a full training step (forward, Dice + BCE loss, backward, fused AdamW) in fp32 and under bf16 autocast
  (the bundles' ``AutocastInferer``), timed round-robin (``time_interleaved``), median and the paired ratio;
* loss agreement: the same initial weights trained on the same batches in fp32 and in bf16, against the noise of
  fp32 itself (a second fp32 run from another initialisation); reported as the mean loss of the last steps.

On a CPU without native bf16 (no AVX512-BF16 / AMX) bf16 is emulated and slow: the table then says so, and the
bundles' ``precision: auto`` keeps fp32 there.

Usage: python research/train_precision.py [--archs setr cvt ...] [--steps 40] [--datalist ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from kvmonai.benchmark.timing import ratio, time_interleaved
from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.inference import AutocastInferer, cpu_has_fast_bf16
from kvmonai.networks import REFERENCES, attentions_for, create
from kvmonai.utils import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def _batches(datalist: Path, n: int, img_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    wf = bundle_workflow(ROOT / "bundles" / "setr_kv", ["train.json"], logging=False, datalist=str(datalist),
                         preset="small", img_size=img_size, num_workers=0, mlflow=False,
                         output_dir="/tmp/kvmonai_precision", ckpt_dir="/tmp/kvmonai_precision")  # fmt: skip
    loader, out = wf.parser.get_parsed_content("train#dataloader"), []
    while len(out) < n:
        for batch in loader:
            out.append((batch["image"].float(), batch["label"].float()))
            if len(out) == n:
                break
    return out


def _trainer(net: torch.nn.Module, precision: str, loss_fn, lr: float):
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4, fused=True)
    inferer = AutocastInferer(precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(inferer(x, net), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def main() -> None:
    from monai.losses import DiceFocalLoss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["setr", "transunet", "cvt", "unetr", "swin_unetr", "unet"])
    parser.add_argument("--datalist", type=Path, default=ROOT / "data/prepared/synthetic/datalist.json")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="training steps per loss curve")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    if not args.datalist.is_file():
        raise SystemExit(f"error: --datalist {args.datalist} does not exist; run ./scripts/demo.sh or kvmonai prepare.")
    torch.manual_seed(0)
    loss_fn = DiceFocalLoss(sigmoid=True, batch=True, gamma=0.0)
    batches = _batches(args.datalist, args.steps, args.img_size)
    native = cpu_has_fast_bf16()
    lines = [
        f"`python research/train_precision.py --steps {args.steps} --repeats {args.repeats}`, "
        f"{time.strftime('%Y-%m-%d')}, CPU with {torch.get_num_threads()} threads, native bf16: {native}; "
        f"preset small at {args.img_size}x{args.img_size}, batch {batches[0][0].shape[0]} slices; loss: mean of the "
        f"last 10 of {args.steps} steps on the same batches",
        "",
        "| arch | fp32 step ms | bf16 step ms | bf16 / fp32 (paired) | loss fp32 | loss bf16 | bf16 - fp32 | "
        "fp32 noise (other init) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in args.archs:
        attention = attentions_for(arch)[0] if arch in REFERENCES else "kv"
        torch.manual_seed(0)
        base = create(arch, attention, "small", img_size=args.img_size, output_prior=0.02)
        x, y = batches[0]
        steps = {p: _trainer(copy.deepcopy(base), p, loss_fn, args.lr) for p in ("fp32", "bf16")}
        timing = time_interleaved({p: (lambda s=s, x=x, y=y: s(x, y)) for p, s in steps.items()}, repeats=args.repeats)
        curves = {}
        for name, precision, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("noise", "fp32", 1)):
            torch.manual_seed(seed)
            net = base if seed == 0 else create(arch, attention, "small", img_size=args.img_size, output_prior=0.02)
            step = _trainer(copy.deepcopy(net), precision, loss_fn, args.lr)
            curves[name] = [step(bx, by) for bx, by in batches]
        tail = {k: statistics.fmean(v[-10:]) for k, v in curves.items()}
        r = ratio(timing["bf16"], timing["fp32"])[0]
        lines.append(
            f"| {arch} | {timing['fp32'].median:.0f} | {timing['bf16'].median:.0f} | {r:.2f}x | {tail['fp32']:.3f} "
            f"| {tail['bf16']:.3f} | {tail['bf16'] - tail['fp32']:+.3f} | {tail['noise'] - tail['fp32']:+.3f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
