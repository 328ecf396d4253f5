#!/usr/bin/env python
"""Screen a training-recipe idea in about a minute: the bundles' recipe re-implemented as one in-memory loop.

The study (``kvmonai study``) is the reference: it runs every pair through its bundle, 15 to 20 minutes on a 2-core
CPU. To decide which recipe changes are worth a study run, this script trains one network on the prepared volumes
with the same ingredients, all of them switchable: 2.5D stacks (z-2, z, z+2), volumes resized in-plane once (labels
by area averaging, ``--soft 1``, or nearest neighbour, ``--soft 0``), slices drawn with ``--pos`` of them holding an
organ, a random affine (probability 0.5: rotation 15 degrees, scale 10 %, shift 8 px), intensity scaling and noise,
Dice + BCE, AdamW with a one-cycle schedule, output biases at the organ prior (``--prior``). Validation Jaccard is
computed as the bundles compute it: probabilities resized bilinearly to the label's own size, thresholded at 0.5,
pixels pooled over the validation fold, mean over the classes. The augmentation runs batched on tensors rather than
through MONAI's per-sample transforms, so absolute times are lower than a bundle run's.

Usage: python research/recipe_probe.py --arch cvt --steps 300 [--bs 8 --lr 2e-3 --size 64 --prior 0.02 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from kvmonai.networks import REFERENCES, attentions_for, create

ROOT = Path(__file__).resolve().parents[1]


def _load(datalist: Path, fold: int, size: int, soft: bool) -> tuple[dict[str, torch.Tensor], list]:
    """Training slices at ``size`` (image, target, has-organ) and validation volumes (image at size, full label)."""
    xs, ys, pos, val = [], [], [], []
    for item in json.loads(datalist.read_text())["training"]:
        img = torch.from_numpy(np.asarray(nib.load(datalist.parent / item["image"]).dataobj).astype(np.float32))
        lo, hi = torch.quantile(img.flatten()[::7], torch.tensor([0.005, 0.995]))
        img = ((img - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
        lab = torch.from_numpy(np.asarray(nib.load(datalist.parent / item["label"]).dataobj).astype(np.float32))
        depth = img.shape[-1]
        idx = torch.arange(depth)
        stack = torch.stack([img[..., (idx + o).clamp(0, depth - 1)] for o in (-2, 0, 2)], 0).permute(3, 0, 1, 2)
        stack = F.interpolate(stack, size=(size, size), mode="bilinear", align_corners=False)
        lab = lab.permute(2, 3, 0, 1)  # (D, 3, H, W)
        if item["fold"] == fold:
            val.append((stack, lab))
            continue
        xs.append(stack)
        ys.append(F.interpolate(lab, size=(size, size), mode="area" if soft else "nearest"))
        pos.append(lab.flatten(1).amax(1) > 0)
    return {"x": torch.cat(xs), "y": torch.cat(ys), "pos": torch.cat(pos)}, val


def _augment(x: torch.Tensor, y: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    on = torch.rand(b) < 0.5
    angle = torch.where(on, (torch.rand(b) * 2 - 1) * 0.26, torch.zeros(b))
    scale = torch.where(on, 1 + (torch.rand(b) * 2 - 1) * 0.1, torch.ones(b))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(angle) / scale, torch.sin(angle) / scale
    theta[:, :, 2] = torch.where(on[:, None], (torch.rand(b, 2) * 2 - 1) * 16 / size, torch.zeros(b, 2))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x, y = F.grid_sample(x, grid, align_corners=False), F.grid_sample(y, grid, align_corners=False)
    gain = torch.where(torch.rand(b) < 0.5, 1 + (torch.rand(b) * 2 - 1) * 0.1, torch.ones(b))
    noisy = (torch.rand(b) < 0.3).float()[:, None, None, None]
    return x * gain[:, None, None, None] + noisy * torch.randn_like(x) * 0.02, y


@torch.no_grad()
def _jaccard(net: torch.nn.Module, volumes: list) -> list[float]:
    net.eval()
    inter, union = torch.zeros(3), torch.zeros(3)
    for x, lab in volumes:
        prob = torch.cat([torch.sigmoid(net(x[i : i + 32])) for i in range(0, len(x), 32)])
        pred = F.interpolate(prob, size=lab.shape[-2:], mode="bilinear", align_corners=False) > 0.5
        truth = lab > 0.5
        inter += (pred & truth).sum((0, 2, 3)).float()
        union += (pred | truth).sum((0, 2, 3)).float()
    net.train()
    return (inter / union.clamp(min=1)).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="cvt")
    p.add_argument("--attention", default=None, help="default: kv (the CNN reference: cnn)")
    p.add_argument("--preset", default="small")
    p.add_argument("--datalist", type=Path, default=ROOT / "data/prepared/synthetic/datalist.json")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--bs", type=int, default=8, help="slices per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pos", type=float, default=0.75, help="share of slices holding an organ")
    p.add_argument("--soft", type=int, default=1, help="1: area-averaged targets, 0: nearest neighbour")
    p.add_argument("--prior", type=float, default=0.02, help="output bias prior; 0: framework initialisation")
    p.add_argument("--aug", type=int, default=1)
    p.add_argument("--evals", type=int, default=3, help="validations spread over the run")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not a.datalist.is_file():
        raise SystemExit(f"error: --datalist {a.datalist} does not exist; run ./scripts/demo.sh or kvmonai prepare.")
    torch.manual_seed(a.seed)
    train, val = _load(a.datalist, a.fold, a.size, bool(a.soft))
    pos, neg = train["pos"].nonzero()[:, 0], (~train["pos"]).nonzero()[:, 0]
    attention = a.attention or (attentions_for(a.arch)[0] if a.arch in REFERENCES else "kv")
    net = create(a.arch, attention, a.preset, img_size=a.size, output_prior=a.prior or None)
    opt = torch.optim.AdamW(net.parameters(), a.lr, weight_decay=1e-4, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=0.1)
    loss_fn = DiceFocalLoss(sigmoid=True, batch=True, gamma=0.0)
    marks = {math.ceil(a.steps * (k + 1) / a.evals) for k in range(a.evals)}
    spent, log = 0.0, []
    for step in range(1, a.steps + 1):
        start = time.perf_counter()
        n_pos = round(a.bs * a.pos)
        ids = torch.cat([pos[torch.randint(len(pos), (n_pos,))], neg[torch.randint(len(neg), (a.bs - n_pos,))]])
        x, y = train["x"][ids], train["y"][ids]
        if a.aug:
            x, y = _augment(x, y, a.size)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        spent += time.perf_counter() - start
        if step in marks:
            per_class = _jaccard(net, val)
            log.append(sum(per_class) / 3)
            classes = ", ".join(f"{name} {v:.3f}" for name, v in zip(("LB", "SB", "St"), per_class, strict=True))
            print(f"step {step:5d}  loss {loss.item():.3f}  val Jaccard {log[-1]:.3f} ({classes})  {spent:.1f} s")
    print(f"{a.arch}_{attention} {a.size}px batch {a.bs} lr {a.lr} steps {a.steps} soft {a.soft} prior {a.prior}: "
          f"val Jaccard {log[-1]:.3f}, {1000 * spent / a.steps:.0f} ms/step")  # fmt: skip


if __name__ == "__main__":
    main()
