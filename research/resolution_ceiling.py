#!/usr/bin/env python
"""Best Jaccard a network working at N x N pixels can reach, measured on the labels themselves.

A perfect network at N x N predicts the label as it looks at that size; the metric is taken at the label's own size.
Two ways back are compared:

* ``nearest``: the label downsampled by nearest neighbour (the old training target), the binary prediction resized
  back by nearest neighbour (the old evaluation);
* ``area``: the label averaged over each output pixel (the bundles' training target: the fraction covered), the
  probabilities resized back bilinearly and thresholded at 0.5 (the bundles' evaluation and inference).

Usage: python research/resolution_ceiling.py [--datalist data/prepared/synthetic/datalist.json] [--sizes 64 96 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from kvmonai.data import CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, default=Path("data/prepared/synthetic/datalist.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 80, 96, 128])
    args = parser.parse_args()
    if not args.datalist.is_file():
        raise SystemExit(f"error: --datalist {args.datalist} does not exist; run `kvmonai prepare` first.")
    items = json.loads(args.datalist.read_text())["training"]
    labels = []
    for item in items:
        volume = np.asarray(nib.load(args.datalist.parent / item["label"]).dataobj)  # (H, W, D, 3)
        labels.append(torch.from_numpy(volume.astype(np.float32)).permute(2, 3, 0, 1))  # (D, 3, H, W)
    print(f"{len(items)} label volumes from {args.datalist}")
    print("| size | way back | " + " | ".join(CLASSES) + " | mean |")
    print("|---:|---|" + "---:|" * (len(CLASSES) + 1))
    for size in args.sizes:
        for way in ("nearest", "area"):
            inter, union = torch.zeros(len(CLASSES)), torch.zeros(len(CLASSES))
            for lab in labels:
                if way == "nearest":
                    small = F.interpolate(lab, size=(size, size), mode="nearest")
                    back = F.interpolate(small, size=lab.shape[-2:], mode="nearest") > 0.5
                else:
                    small = F.interpolate(lab, size=(size, size), mode="area")
                    back = F.interpolate(small, size=lab.shape[-2:], mode="bilinear", align_corners=False) > 0.5
                truth = lab > 0.5
                inter += (back & truth).sum((0, 2, 3)).float()
                union += (back | truth).sum((0, 2, 3)).float()
            iou = inter / union.clamp(min=1)
            print(f"| {size} | {way} | " + " | ".join(f"{v:.3f}" for v in iou.tolist()) + f" | {iou.mean():.3f} |")


if __name__ == "__main__":
    main()
