"""The CvT key-value design study behind ``docs/cvt_kv.md``: complexity and a short synthetic training comparison.

Usage (from the repository root)::

    .venv/bin/python research/cvt_kv.py complexity
    .venv/bin/python research/cvt_kv.py train --steps 800 --size 64 --seeds 0 1
    .venv/bin/python research/cvt_kv.py timing

``complexity`` prints parameters and MACs of every attention/key-mode variant at the ``paper`` preset (224 x 224,
3 input channels, 3 classes), for the whole network and for the encoder. ``train`` trains every variant at the
``small`` preset for the same number of steps on the same synthetic UW-Madison-like slices
(:mod:`kvmonai.data.synth`, rendered in memory) and prints validation Dice / Jaccard, mean +- std over the seeds.
``timing`` measures one training step of the ``small`` presets of CvT and TransUNet at 128 x 128, batch 8.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from kvmonai.complexity.counting import count_macs, count_parameters
from kvmonai.data.synth import generate_scan, plan_dataset
from kvmonai.metrics import confusion_counts, jaccard_from_counts
from kvmonai.networks.nets import cvt, transunet

#: (label, attention, kv_mode) of the compared variants
VARIANTS: list[tuple[str, str, str]] = [
    ("QKV (reference)", "qkv", "shared_stride1"),
    ("KV shared_stride1", "kv", "shared_stride1"),
    ("KV full_res", "kv", "full_res"),
    ("KV down_up", "kv", "down_up"),
    ("KV+Pos shared_stride1", "kvpos", "shared_stride1"),
    ("KV+Pos full_res", "kvpos", "full_res"),
    ("KV+Pos down_up", "kvpos", "down_up"),
]


class _Encoder(nn.Module):
    def __init__(self, net: cvt.CvTUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)[-1]


def complexity(args: argparse.Namespace) -> None:
    print("| variant | params | params vs QKV | MACs (G) | MACs vs QKV | encoder params | encoder MACs (G) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for label, attention, kv_mode in VARIANTS:
        torch.manual_seed(0)
        net = cvt.CvTUNet(3, 3, 224, attention=attention, kv_mode=kv_mode, **cvt.PRESETS["paper"])
        params, macs = count_parameters(net), count_macs(net, (1, 3, 224, 224))
        enc = _Encoder(net)
        enc_params = sum(count_parameters(m) for m in (net.stage1, net.stage2, net.stage3, net.norm))
        enc_macs = count_macs(enc, (1, 3, 224, 224))
        if base is None:
            base = (params, macs)
        dp, dm = 100 * (params / base[0] - 1), 100 * (macs / base[1] - 1)
        print(
            f"| {label} | {params:,} | {dp:+.2f}% | {macs / 1e9:.3f} | {dm:+.2f}% | {enc_params:,} | "
            f"{enc_macs / 1e9:.3f} |"
        )


def _slices(cases: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic slices resized to ``size``: images (N, 1, s, s) scaled per scan, multi-label masks (N, 3, s, s)."""
    images, labels = [], []
    for spec in plan_dataset(cases=cases, seed=seed, days=1, slices=48, scale=0.5):
        img, lab = generate_scan(spec)  # (H, W, D), (H, W, D, 3)
        img = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[:, None]
        img = img / torch.quantile(img.flatten()[::7], 0.995).clamp_min(1.0)
        lab = torch.from_numpy(lab).permute(2, 3, 0, 1).float()
        images.append(F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False))
        labels.append(F.interpolate(lab, size=(size, size), mode="nearest"))
    return torch.cat(images), torch.cat(labels)


def _train_one(attention, kv_mode, seed, data, args) -> dict[str, float]:
    (xt, yt), (xv, yv) = data
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    net = cvt.CvTUNet(
        1, 3, args.size, attention=attention, kv_mode=kv_mode, attn_scale=args.attn_scale, **cvt.PRESETS[args.preset]
    )
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    dice_loss = DiceLoss(sigmoid=True, batch=True)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, xt.shape[0], (args.batch,), generator=gen)
        x, y = xt[idx], yt[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5  # left-right flips
        x, y = (
            torch.where(flip[:, None, None, None], x.flip(-1), x),
            torch.where(flip[:, None, None, None], y.flip(-1), y),
        )
        logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    net.eval()
    counts = []
    with torch.no_grad():
        for i in range(0, xv.shape[0], 32):
            pred = net(xv[i : i + 32]) > 0
            counts.append(confusion_counts(pred, yv[i : i + 32] > 0.5))
    c = torch.cat(counts).sum(0)  # (3, 3): pooled over all validation pixels
    tp, fp, fn = c[:, 0].double(), c[:, 1].double(), c[:, 2].double()
    dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).mean().item()
    return {
        "dice": dice,
        "jaccard": jaccard_from_counts(c, "mean").item(),
        "wjaccard": jaccard_from_counts(c, "weighted").item(),
        "loss": loss.item(),
        "seconds": seconds,
    }


def train(args: argparse.Namespace) -> None:
    x, y = _slices(args.cases, args.data_seed, args.size)
    per_case = x.shape[0] // args.cases
    n_train = per_case * (args.cases - args.val_cases)
    data = ((x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]))
    print(
        f"data: {n_train} training / {x.shape[0] - n_train} validation slices at {args.size}x{args.size}; "
        f"preset {args.preset!r}, {args.steps} steps of batch {args.batch}, AdamW lr {args.lr} one-cycle, "
        f"attn_scale {args.attn_scale!r}, seeds {args.seeds}, {args.workers} workers x {args.threads} threads",
        flush=True,
    )
    variants = [v for v in VARIANTS if args.only is None or v[0] in args.only]
    jobs = [(v, s) for v in variants for s in args.seeds]
    results: dict[tuple[str, int], dict[str, float]] = {}
    # independent runs in worker processes (fork: the data is shared), each with args.threads torch threads
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_train_one, v[1], v[2], s, data, args): (v[0], s) for v, s in jobs}
        for future in as_completed(futures):
            label, s = futures[future]
            results[label, s] = r = future.result()
            print(f"  {label} seed {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    rows = [(v[0], [results[v[0], s] for s in args.seeds]) for v in variants]
    print("\n| variant | Dice | Jaccard | weighted Jaccard | train s/run |")
    print("|---|---:|---:|---:|---:|")
    for label, runs in rows:

        def ms(key, runs=runs):
            vals = [r[key] for r in runs]
            return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}"

        secs = statistics.mean(r["seconds"] for r in runs)
        print(f"| {label} | {ms('dice')} | {ms('jaccard')} | {ms('wjaccard')} | {secs:.0f} |")


def timing(args: argparse.Namespace) -> None:
    """Median and minimum seconds per training step (forward, backward, Adam) at 128 x 128, batch 8."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 128, 128), torch.randint(0, 3, (8, 128, 128))
    for name, module in (("cvt", cvt), ("transunet", transunet)):
        for attention in ("qkv", "kv"):
            net = getattr(module, "CvTUNet" if name == "cvt" else "TransUNet")(
                3, 3, 128, attention=attention, **module.PRESETS["small"]
            )
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            times = []
            for i in range(args.repeats + 3):
                t = time.perf_counter()
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i >= 3:
                    times.append(time.perf_counter() - t)
            print(
                f"{name} small {attention}: {count_parameters(net):,} params, step median "
                f"{statistics.median(times):.3f} s, min {min(times):.3f} s ({torch.get_num_threads()} threads)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("complexity", help="params and MACs at the paper preset")
    t = sub.add_parser("train", help="short synthetic training of every variant")
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--preset", default="small")
    t.add_argument("--attn-scale", default="dim", choices=cvt.ATTN_SCALES)
    t.add_argument("--cases", type=int, default=8)
    t.add_argument("--val-cases", type=int, default=2)
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--only", nargs="+", default=None, help="variant labels to run (default: all)")
    t.add_argument("--workers", type=int, default=2, help="runs in parallel")
    t.add_argument("--threads", type=int, default=1, help="torch threads per run")
    b = sub.add_parser("timing", help="seconds per small-preset training step")
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    {"complexity": complexity, "train": train, "timing": timing}[args.command](args)


if __name__ == "__main__":
    main()
