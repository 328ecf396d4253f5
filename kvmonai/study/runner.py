"""``kvmonai study``: train and evaluate architecture/attention pairs through their bundles, then report.

Every pair runs through its MONAI bundle (``bundles/<arch>_<attention>``) with ``monai.bundle.ConfigWorkflow``, the
class ``python -m monai.bundle run`` uses, so the study and a user's own bundle runs share one code path and one
recipe. Results of each (pair, fold, seed) run are written to ``OUT/runs/<pair>_fold<F>_seed<S>/``; a run whose
``result.json`` exists is not redone, so an interrupted study continues where it stopped. A failing run is recorded
with its error and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.utils import write_text_atomic

__all__ = ["StudyConfig", "measure_latency", "run_study"]

logger = logging.getLogger(__name__)

REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@dataclass
class StudyConfig:
    """What a study runs.

    Args:
        datalist: ``datalist.json`` written by ``kvmonai prepare``.
        out: result folder (``results/<name>``).
        pairs: ``(arch, attention)`` pairs.
        preset: network preset.
        img_size: network input size.
        epochs: training epochs per run.
        folds: validation folds.
        seeds: seeds.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        bundles: folder holding the bundles.
        data_note: one line on the data, printed first in the report.
        synthetic: the data is the synthetic stand-in.
        overrides: further bundle overrides (e.g. ``{"slices_per_volume": 8}``).
    """

    datalist: Path
    out: Path
    pairs: Sequence[tuple[str, str]]
    preset: str = "small"
    img_size: int = 128
    epochs: int = 4
    folds: Sequence[int] = (0,)
    seeds: Sequence[int] = (0,)
    device: str = "cpu"
    bundles: Path = REPO_BUNDLES
    data_note: str = ""
    synthetic: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def tracking_uri(self) -> str:
        from monai.utils import path_to_sqlite_uri

        return os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str((self.out / "mlruns.db").resolve()))


def measure_latency(
    net: torch.nn.Module, shape: Sequence[int], device: str, repeats: int = 10, warmup: int = 2
) -> tuple[float, float]:
    """Median and inter-quartile range of the forward time (ms) of ``net`` on a random input of ``shape``."""
    from kvmonai.benchmark.timing import forward_call, time_interleaved

    x = torch.randn(*shape, device=device)
    net = net.to(device).eval()
    timing = time_interleaved({"net": forward_call(net, x)}, repeats=repeats, warmup=warmup, device=device)["net"]
    return timing.median, timing.iqr


def _run_one(cfg: StudyConfig, arch: str, attention: str, fold: int, seed: int, parent_id: str | None) -> dict:
    from kvmonai.bundle.checkpoint import load_checkpoint, load_weights
    from kvmonai.networks import create

    name = f"{arch}_{attention}"
    run_dir = (cfg.out / "runs" / f"{name}_fold{fold}_seed{seed}").resolve()
    bundle = cfg.bundles / name
    if not (bundle / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle {bundle} not found; run `python scripts/make_bundles.py`.")
    overrides = {
        "bundle_root": str(bundle.resolve()),
        "datalist": str(cfg.datalist.resolve()),
        "fold": fold,
        "seed": seed,
        "preset": cfg.preset,
        "img_size": cfg.img_size,
        "max_epochs": cfg.epochs,
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir),
        "tracking_uri": cfg.tracking_uri,
        "experiment_name": f"kvmonai-study-{cfg.name}",
        "device": f"$torch.device('{cfg.device}')",
        "num_workers": 0,
        **cfg.overrides,
    }
    # an earlier, interrupted invocation may have left a checkpoint: continue it, or only evaluate if it finished
    ckpt = run_dir / "checkpoint_last.pt"
    done_epochs = load_checkpoint(ckpt)["epoch"] if ckpt.is_file() else 0
    start = time.perf_counter()
    train = bundle_workflow(bundle, ["train.json"], logging=False, **overrides, resume=done_epochs > 0)
    if done_epochs < cfg.epochs:
        try:
            train.run()
        finally:
            train.finalize()
    train_seconds = time.perf_counter() - start
    evaluate = bundle_workflow(bundle, ["train.json", "evaluate.json"], logging=False, **overrides)
    try:
        evaluate.run()
    finally:
        evaluate.finalize()
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    settings = json.loads((run_dir / "run_settings.json").read_text())

    in_channels = int(train.parser.get_parsed_content("in_channels"))  # the bundle's 2.5D slice count
    net = create(arch, attention, cfg.preset, in_channels=in_channels, img_size=cfg.img_size)
    load_weights(net, run_dir / "model.pt")
    latency, iqr = measure_latency(net, (1, in_channels, cfg.img_size, cfg.img_size), cfg.device)
    result = {
        "arch": arch,
        "attention": attention,
        "fold": fold,
        "seed": seed,
        "params": settings["params"],
        "macs": settings["macs"],
        "latency_ms": latency,
        "latency_iqr_ms": iqr,
        "train_seconds": train_seconds,
        "jaccard": summary["jaccard"],
        "weighted_jaccard": summary["weighted_jaccard"],
        **{f"dice_{k}": v for k, v in summary["class_dice"]["skip"].items()},
        "dice": summary["competition"]["skip"]["dice"],
        "hausdorff": summary["competition"]["skip"]["hausdorff"],
        "score": summary["competition"]["skip"]["score"],
        "score_perfect": summary["competition"]["perfect"]["score"],
        "run_dir": str(run_dir),
    }
    _tag_child(cfg, f"{name}_fold{fold}_seed{seed}", parent_id, result)
    write_text_atomic(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _tag_child(cfg: StudyConfig, run_name: str, parent_id: str | None, result: dict) -> None:
    """Make the bundle's MLflow run a child of the study run and add the evaluation metrics to it."""
    if parent_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(f"kvmonai-study-{cfg.name}")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1
    )
    if not runs:
        return
    run_id = runs[0].info.run_id
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    for key in ("jaccard", "weighted_jaccard", "dice", "score", "latency_ms"):
        if result.get(key) is not None:
            client.log_metric(run_id, f"eval_{key}", float(result[key]))


def _parent_run(cfg: StudyConfig) -> str | None:
    """The study's MLflow parent run (reused when the study is resumed)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(cfg.tracking_uri)
        name = f"kvmonai-study-{cfg.name}"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        found = client.search_runs([experiment_id], filter_string="tags.kvmonai_study = 'parent'", max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"study_{cfg.name}", tags={"kvmonai_study": "parent"})
        client.log_param(run.info.run_id, "preset", cfg.preset)
        client.log_param(run.info.run_id, "epochs", cfg.epochs)
        client.log_param(run.info.run_id, "folds", ",".join(map(str, cfg.folds)))
        client.log_param(run.info.run_id, "seeds", ",".join(map(str, cfg.seeds)))
        client.log_param(run.info.run_id, "datalist", str(cfg.datalist.resolve()))
        client.log_param(run.info.run_id, "synthetic", cfg.synthetic)
        return run.info.run_id
    except Exception as e:  # tracking must never stop the study
        logger.warning(f"MLflow parent run not created ({e}); runs are still tracked individually.")
        return None


def run_study(cfg: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """Run every (pair, fold, seed) not finished yet, then write the report.

    Returns:
        ``{"results": [...], "failures": [...], "report": path}``.
    """
    from kvmonai.study.report import write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    parent_id = _parent_run(cfg)
    jobs = [(a, t, f, s) for a, t in cfg.pairs for f in cfg.folds for s in cfg.seeds]
    results, failures = [], []
    bar = tqdm(jobs, desc=f"study {cfg.name}", unit="run", disable=not progress)
    for arch, attention, fold, seed in bar:
        bar.set_postfix_str(f"{arch}_{attention} fold {fold} seed {seed}")
        done = cfg.out / "runs" / f"{arch}_{attention}_fold{fold}_seed{seed}" / "result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        try:
            results.append(_run_one(cfg, arch, attention, fold, seed, parent_id))
        except Exception as e:
            logger.error(f"{arch}_{attention} fold {fold} seed {seed} failed: {e}")
            failures.append(
                {"arch": arch, "attention": attention, "fold": fold, "seed": seed, "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc()}
            )  # fmt: skip
    report = write_report(cfg, results, failures)
    if parent_id is not None:
        try:
            from mlflow import MlflowClient

            client = MlflowClient(cfg.tracking_uri)
            for path in sorted(cfg.out.glob("*.png")) + [cfg.out / "report.md", cfg.out / "results.csv"]:
                client.log_artifact(parent_id, str(path))
            client.set_terminated(parent_id, "FAILED" if failures else "FINISHED")
        except Exception as e:
            logger.warning(f"could not log the report to MLflow: {e}")
    return {"results": results, "failures": failures, "report": report}
