"""``kvmonai retrofit --weights QKV_MODEL --bundle ARCH_kv``: start a KV bundle from a trained QKV model, fine-tune.

With ``--measure`` (no ``--weights``) it trains QKV and KV from scratch for ``--epochs`` each, retrofits the QKV
model, fine-tunes it for ``--finetune-epochs`` and reports how many epochs the retrofitted KV needs to come within
``--tolerance`` Jaccard of QKV (:func:`kvmonai.retrofit.measure_retrofit`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kvmonai.paths import find_bundle
from kvmonai.utils import add_count_argument, add_override_argument

__all__ = ["add_arguments", "run"]

REPO = Path(__file__).resolve().parents[2]
#: how the study's recipe draws training batches; retrofit draws them the same way
_BATCH_KEYS = ("volumes_per_batch", "slices_per_volume", "positive_fraction")


def _bundle(text: str) -> Path:
    try:
        return find_bundle(text, "train.json")
    except FileNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai retrofit``."""
    parser.add_argument("--bundle", type=_bundle, required=True, help="the KV bundle: a name (setr_kv) or a folder")
    parser.add_argument("--weights", type=Path, help="models/model.pt of the same architecture's QKV bundle")
    parser.add_argument("--data", type=Path, help="datalist.json (default: the bundle's)")
    add_count_argument(
        parser,
        "--epochs",
        default=10,
        help="fine-tuning epochs; with --measure, the epochs of each run from scratch (default: 10)",
    )
    add_count_argument(
        parser,
        "--finetune-epochs",
        help="with --measure: fine-tuning epochs of the retrofitted model (default: --epochs)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="QKV vs KV from scratch vs KV retrofitted, same data and epochs; epochs to the target",
    )
    parser.add_argument("--tolerance", type=float, default=0.01, help="Jaccard gap to QKV that counts (default 0.01)")
    parser.add_argument("--out", type=Path, help="run folder (default: results/retrofit_<bundle>)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_override_argument(
        parser,
        "bundle setting for every run, repeatable (e.g. --set preset=tiny --set img_size=64); "
        "default: the network and batch settings of the study recipe, configs/study.json",
    )


def run(args: argparse.Namespace) -> int:
    """Convert and fine-tune (or measure); returns 0, or 2 for weights or a bundle that do not fit."""
    import torch

    from kvmonai.bundle import STUDY_NETWORK_KEYS, device_overrides, study_recipe
    from kvmonai.networks import PretrainedError
    from kvmonai.retrofit import RetrofitError, convert_qkv_model, measure_retrofit, train_bundle

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = dict(args.overrides)
    if args.data is not None:
        overrides["datalist"] = str(args.data.resolve())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a QKV model from `kvmonai study`: its network settings and batches from the study's recipe (configs/study.json);
    # epochs and validation are retrofit's own (it validates every epoch to see when KV catches up); --set wins
    recipe = {k: v for k, v in study_recipe().items() if k in (*STUDY_NETWORK_KEYS, *_BATCH_KEYS)}
    overrides = {**recipe, **device_overrides(device), **overrides}
    out = (args.out or REPO / "results" / f"retrofit_{args.bundle.name}").resolve()
    try:
        if args.measure:
            if args.weights is not None:
                raise RetrofitError("--measure trains its own QKV model; leave out --weights.")
            result = measure_retrofit(
                args.bundle, out, args.epochs, args.finetune_epochs, tolerance=args.tolerance, **overrides
            )
            print((out / "retrofit.md").read_text())
            print(json.dumps({k: result[k] for k in ("qkv_jaccard", "retrofit_jaccard", "epochs_to_target")}))
            return 0
        if args.weights is None:
            raise RetrofitError("--weights (the QKV model) is required without --measure.")
        init = out / "kv_init.pt"
        report = convert_qkv_model(args.bundle, args.weights, init, overrides)
        print(report.summary())
        print(f"wrote {init}; fine-tuning {args.bundle.name} for {args.epochs} epochs into {out}")
        metrics = train_bundle(args.bundle, out, **{**overrides, "max_epochs": args.epochs, "pretrained": str(init)})
    except (RetrofitError, PretrainedError) as e:
        print(f"kvmonai retrofit: error: {e}", file=sys.stderr)
        return 2
    if metrics:
        print(f"best validation Jaccard {max(m['val_jaccard'] for m in metrics):.4f}; weights {out / 'model.pt'}")
    return 0
