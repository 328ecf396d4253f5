"""``kvmonai study``: reproduce the paper's KV-vs-QKV comparison on the data at hand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kvmonai.bundle.recipe import study_recipe
from kvmonai.utils import add_count_argument, int_list

__all__ = ["add_arguments", "run"]

#: the study's recipe, its defaults (kvmonai/bundle/template/configs/study.json)
_R = study_recipe()

REPO = Path(__file__).resolve().parents[2]


def _pair_list(text: str) -> list[tuple[str, str]]:
    from kvmonai.networks import attentions_for, pairs

    if text == "all":
        return pairs()
    out = []
    known = {a for a, _ in pairs(extra=True)}
    for item in text.split(","):
        arch, _, attention = item.strip().rpartition("_")
        if not arch or arch not in known or attention not in attentions_for(arch):
            raise argparse.ArgumentTypeError(
                f"unknown pair {item!r}; use arch_attention names such as setr_kv, swin_unetr_qkv, swin_kv (the timm "
                "backbones crossvit, swin, nextvit), or 'all' (the 14 pairs of the five transformers)."
            )
        out.append((arch, attention))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai study``."""
    from kvmonai.networks import PRESETS

    parser.add_argument("--data", type=Path, help="Kaggle-layout folder (train.csv + train/), or a folder prepared "
                        "by `kvmonai prepare`; default: a synthetic set written to data/synthetic")  # fmt: skip
    parser.add_argument("--name", default=None, help="study name; results go to results/<name> (default: from data)")
    parser.add_argument("--out", type=Path, help="result folder (default: results/<name>)")
    parser.add_argument(
        "--pairs",
        type=_pair_list,
        default="all",
        help="comma-separated pairs, e.g. setr_qkv,setr_kv "
        "or swin_qkv,swin_kv (default: all, the 14 pairs of the five transformers)",
    )
    parser.add_argument("--preset", choices=PRESETS, help=f"network sizes (default: {_R['preset']})")
    add_count_argument(
        parser, "--img-size", minimum=16, multiple_of=16,
        help=f"input size (default: {_R['img_size']} at the recipe's preset, else the preset's own size)",
    )  # fmt: skip
    add_count_argument(parser, "--epochs", help=f"training epochs per run (default: {_R['max_epochs']})")
    parser.add_argument("--folds", type=int_list("--folds", minimum=0), default=[0],
                        help="validation folds, e.g. 0,1,2 (default: 0)")  # fmt: skip
    parser.add_argument("--seeds", type=int_list("--seeds", minimum=0), default=[0],
                        help="seeds, e.g. 0,1,2 (default: 0)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_count_argument(
        parser, "--slices-per-volume", help=f"slices drawn per volume (default: {_R['slices_per_volume']})"
    )
    add_count_argument(parser, "--volumes-per-batch", help=f"volumes per step (default: {_R['volumes_per_batch']})")
    parser.add_argument("--positive-fraction", type=float, help="share of slices drawn from slices holding an "
                        f"organ (default: {_R['positive_fraction']})")  # fmt: skip
    add_count_argument(parser, "--val-interval", help=f"validate every N epochs (default: {_R['val_interval']})")
    add_count_argument(parser, "--synth-cases", default=16, help="cases of the default synthetic set")
    add_count_argument(parser, "--synth-days", default=1, help="scanned days per case of the default synthetic set")
    add_count_argument(parser, "--synth-slices", default=48, help="slices per scan of the default synthetic set")
    parser.add_argument("--synth-scale", type=float, default=0.5, help="image scale of the default synthetic set")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false",
        help="do not train the CNN reference (unet_cnn: MONAI BasicUNet, same recipe; own row)",
    )  # fmt: skip
    add_count_argument(parser, "--jobs", default=None,
                       help="runs trained side by side in worker processes, each with its share of the CPU threads "
                       "(default: 2 on a CPU with 2+ cores, else 1)")  # fmt: skip
    parser.add_argument("--margin", type=float, default=0.01,
                        help="the verdict's non-inferiority/equivalence margin in Jaccard (default: 0.01)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - the verdict intervals' level (default: 0.05)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true",
                        help="the runs' logs on the terminal (default: in runs/<run>/run.log)")  # fmt: skip


def _resolve_data(args: argparse.Namespace) -> tuple[Path, str, bool, str]:
    """(datalist, data description, synthetic?, default name)."""
    from kvmonai.data.prepare import prepare_dataset
    from kvmonai.data.synth import write_synthetic_dataset

    data = args.data
    if data is None:
        data = REPO / "data" / "synthetic"
        if not (data / "train.csv").is_file():
            print(f"[kvmonai study] no --data: writing a synthetic dataset to {data}", file=sys.stderr)
            write_synthetic_dataset(
                data, cases=args.synth_cases, seed=0, days=args.synth_days, slices=args.synth_slices,
                scale=args.synth_scale, progress=not args.quiet,
            )  # fmt: skip
    if not data.exists():
        raise SystemExit(f"error: --data {data} does not exist.")
    if (data / "datalist.json").is_file():
        datalist = data / "datalist.json"
        source = Path(json.loads(datalist.read_text()).get("source", ""))
    elif (data / "train.csv").is_file():
        prepared = REPO / "data" / "prepared" / data.name
        summary = prepare_dataset(data, prepared, progress=not args.quiet)
        datalist, source = Path(summary.datalist), data
    else:
        raise SystemExit(
            f"error: --data {data} holds neither train.csv (Kaggle layout) nor datalist.json (kvmonai prepare)."
        )
    synthetic = (source / "synthetic.json").is_file()
    items = json.loads(datalist.read_text())["training"]
    note = (
        f"{len({i['case'] for i in items})} cases, {len(items)} case-day volumes, "
        f"{sum(i['num_slices'] for i in items)} slices from `{source}`"
    )
    return datalist, note, synthetic, "synthetic" if synthetic else data.name


def _jobs(jobs: int | None, device: str) -> int:
    """``--jobs``: validated, or the default (2 side by side on a CPU with at least 2 cores, else 1)."""
    import os

    if jobs is None:
        return min(2, os.cpu_count() or 1) if device == "cpu" else 1
    if jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1, got {jobs}.")
    return jobs


def _verdict_options(args: argparse.Namespace) -> dict[str, float]:
    """``--margin`` and ``--alpha``, checked before any data is written or trained (the verdict comes at the end)."""
    if not args.margin > 0:
        raise SystemExit(f"error: --margin must be > 0, got {args.margin}.")
    if not 0 < args.alpha < 1:
        raise SystemExit(f"error: --alpha must be between 0 and 1, got {args.alpha}.")
    return {"margin": args.margin, "alpha": args.alpha}


def _recipe(args: argparse.Namespace) -> dict:
    """The study's recipe (``configs/study.json`` of the bundle template) with the options given on the command line.

    Another preset than the recipe's, without ``--img-size``, trains at that preset's own size.
    """
    from kvmonai.networks import PRESET_IMG_SIZE

    recipe = dict(_R)
    if args.preset is not None and args.preset != recipe["preset"]:
        recipe.update(preset=args.preset, img_size=PRESET_IMG_SIZE[args.preset])
    given = {"img_size": args.img_size, "max_epochs": args.epochs, "val_interval": args.val_interval,
             "slices_per_volume": args.slices_per_volume, "volumes_per_batch": args.volumes_per_batch,
             "positive_fraction": args.positive_fraction}  # fmt: skip
    recipe.update({k: v for k, v in given.items() if v is not None})
    return recipe


def run(args: argparse.Namespace) -> int:
    """Run the study and print where the report is."""
    import torch

    from kvmonai.study import StudyConfig, run_study

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MONAI announces on import that the GPU DICOM decoder is missing: a notice about an optional GPU package, not
    # a problem of the study (the runs' own logs keep every message)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    recipe, verdict = _recipe(args), _verdict_options(args)
    datalist, note, synthetic, default_name = _resolve_data(args)
    name = args.name or f"{default_name}_{recipe['preset']}"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = StudyConfig(
        datalist=datalist,
        out=args.out or REPO / "results" / name,
        pairs=args.pairs if isinstance(args.pairs, list) else _pair_list(args.pairs),
        preset=recipe["preset"],
        img_size=recipe["img_size"],
        epochs=recipe["max_epochs"],
        folds=args.folds,
        seeds=args.seeds,
        device=device,
        data_note=note,
        synthetic=synthetic,
        reference=args.reference,
        jobs=_jobs(args.jobs, device),
        verbose=args.verbose,
        **verdict,
        overrides={
            "slices_per_volume": recipe["slices_per_volume"],
            "volumes_per_batch": recipe["volumes_per_batch"],
            "positive_fraction": recipe["positive_fraction"],
            "val_interval": recipe["val_interval"],
        },
    )
    outcome = run_study(cfg, progress=not args.quiet)
    verdict = cfg.out / "verdict.csv"
    if verdict.is_file():
        from kvmonai.study import read_verdict, verdict_lines

        rows = read_verdict(verdict)
        print(f"verdict (pooled Jaccard, margin {cfg.margin:g}; details in the report):")
        for line in verdict_lines(rows):
            print(f"  {line}")
        needed = [r["seeds_needed_all_folds"] for r in rows if r["organ"] == "all" and r["metric"] == "jaccard"]
        if any(r["seeds"] < 2 for r in rows if r["organ"] == "all"):
            print("  one seed: every verdict is inconclusive (training noise unknown); run --seeds 0,1,2 as a pilot, "
                  "then `kvmonai verdict <study> --plan`")  # fmt: skip
        elif any(n is not None for n in needed):
            print(f"  seeds needed for a conclusive study at all folds: up to {max(n for n in needed if n)}")
    print(f"report: {outcome['report']}")
    if outcome["failures"]:
        print(f"{len(outcome['failures'])} run(s) failed; see the report and {cfg.out / 'failures.json'}")
        return 1
    return 0
