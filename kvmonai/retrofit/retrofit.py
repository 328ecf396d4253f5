"""Retrofit: start a KV bundle from a trained QKV model of the same architecture and fine-tune it.

The QKV model's weights go into the KV network through :func:`kvmonai.networks.pretrained.load_pretrained` (its QKV
twin, then :func:`~kvmonai.networks.blocks.swap_attention`): every weight is kept except the query projections,
which KV attention does not have (Borji, "Key-Value Transformer", arXiv:2305.19129). The converted weights are
written as a plain state dict and the KV bundle trains from them through its ``pretrained`` setting, with MONAI's
``ConfigWorkflow`` as ``python -m monai.bundle run`` would.

:func:`measure_retrofit` compares, on the same data and epochs: QKV trained from scratch, KV trained from scratch,
and KV retrofitted from that QKV model, validated after every fine-tuning epoch (and before the first), and reports
how many fine-tuning epochs the retrofitted KV needs to come within ``tolerance`` Jaccard of the QKV model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvmonai.bundle import bundle_workflow, read_metrics_csv
from kvmonai.networks import create, load_pretrained, load_weights, read_state, save_atomic, state_mismatch
from kvmonai.utils import KVMonaiError, markdown_table, write_text_atomic

__all__ = ["RetrofitError", "bundle_settings", "convert_qkv_model", "measure_retrofit", "train_bundle"]


class RetrofitError(KVMonaiError, ValueError):
    """The weights are not a QKV model of the bundle's architecture, or the bundle is not a KV bundle."""


def bundle_settings(bundle: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``arch``, ``attention``, ``preset``, ``img_size`` and ``in_channels`` of a bundle's ``train.json``."""
    from monai.bundle import ConfigParser

    config = Path(bundle) / "configs" / "train.json"
    if not config.is_file():
        raise RetrofitError(f"{bundle} is not a kvmonai bundle: {config} does not exist.")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update(dict(overrides or {}))
    return {k: parser.get_parsed_content(k) for k in ("arch", "attention", "preset", "img_size", "in_channels")}


def convert_qkv_model(
    bundle: str | os.PathLike, weights: str | os.PathLike, out: str | os.PathLike, overrides: Mapping[str, Any] = None
) -> Any:
    """Write the KV bundle's network, initialised from the QKV model ``weights``, to ``out``.

    Args:
        bundle: a KV or KV+Pos bundle folder.
        weights: ``models/model.pt`` (or a training checkpoint) of the QKV bundle of the same architecture, trained
            with the same preset, image size and input channels.
        out: the converted state dict (written atomically).
        overrides: bundle settings the QKV model was trained with (``preset``, ``img_size``...).

    Returns:
        the :class:`~kvmonai.networks.pretrained.LoadReport` (its ``dropped`` lists the query projections).

    Raises:
        RetrofitError: if the bundle is not KV, or ``weights`` are not a QKV model of that network.
    """

    s = bundle_settings(bundle, overrides)
    if s["attention"] not in ("kv", "kvpos"):
        raise RetrofitError(f"{bundle} is a {s['attention']!r} bundle; retrofit starts a KV or KV+Pos bundle.")
    net_args = {"preset": s["preset"], "in_channels": s["in_channels"], "img_size": s["img_size"]}
    qkv = create(s["arch"], "qkv", **net_args)
    state = read_state(weights)
    details = state_mismatch(qkv, state)
    if details:
        raise RetrofitError(
            f"{weights} is not a QKV {s['arch']} model with preset {s['preset']!r}, img_size {s['img_size']} and "
            f"{s['in_channels']} input channels ({details}). Retrofit takes models/model.pt of the "
            f"{s['arch']}_qkv bundle trained with those settings."
        )
    net = create(s["arch"], s["attention"], **net_args)
    report = load_pretrained(net, weights, strict=True, source_format="kvmonai")
    save_atomic(net.state_dict(), out)
    return report


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    """The validated epochs of a run, as numbers."""

    return [
        {k: float(v) for k, v in row.items() if v not in ("", None)}
        for row in read_metrics_csv(run_dir)
        if row.get("val_jaccard")
    ]


def _workflow(bundle: str | os.PathLike, run_dir: Path, overrides: Mapping[str, Any]) -> Any:
    """The bundle's ``train.json`` workflow writing into ``run_dir`` (its ``output_dir`` and ``ckpt_dir``)."""
    settings = {"bundle_root": str(Path(bundle).resolve()), "output_dir": str(run_dir), "ckpt_dir": str(run_dir)}
    return bundle_workflow(bundle, ["train.json"], logging=False, **{**settings, **overrides})


def train_bundle(bundle: str | os.PathLike, run_dir: str | os.PathLike, **overrides: Any) -> list[dict[str, float]]:
    """Train ``bundle`` into ``run_dir`` (its run folder and ``model.pt``); returns the validated epochs' metrics.

    Args:
        bundle: the bundle folder.
        run_dir: ``output_dir`` and ``ckpt_dir`` of the run.
        overrides: bundle settings (``datalist``, ``max_epochs``, ``pretrained``...).
    """
    run_dir = Path(run_dir).resolve()
    workflow = _workflow(bundle, run_dir, overrides)
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return _metrics(run_dir)


def _validate(bundle: Path, weights: Path, run_dir: Path, overrides: Mapping[str, Any]) -> float:
    """The bundle's validation Jaccard of ``weights``, with its own validation evaluator (no training)."""

    workflow = _workflow(bundle, run_dir.resolve(), overrides)
    try:
        load_weights(workflow.parser.get_parsed_content("network"), weights)
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        evaluator.run()
        return float(evaluator.state.metrics["val_jaccard"])
    finally:
        workflow.finalize()


def measure_retrofit(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int,
    finetune_epochs: int | None = None,
    tolerance: float = 0.01,
    **overrides: Any,
) -> dict[str, Any]:
    """QKV trained vs KV from scratch vs KV retrofitted from that QKV model, on the same data and budget.

    Long on purpose: the three trainings (QKV, KV from scratch, KV retrofitted) share one data split and
    settings, and their comparison is written at the end in one place.

    The QKV bundle (``<arch>_qkv`` beside ``bundle``) and the KV bundle each train ``epochs`` epochs from scratch;
    then the QKV model (its ``model.pt``, validated after its last epoch) is converted (:func:`convert_qkv_model`),
    validated, and fine-tuned
    with the KV bundle for ``finetune_epochs`` epochs, validated after each. The runs from scratch validate after
    their last epoch. Every validation is the bundles' own (mean class Jaccard over the validation fold at full
    resolution).

    Args:
        bundle: the KV (or KV+Pos) bundle folder.
        out: result folder (``qkv/``, ``kv_scratch/``, ``retrofit/`` runs, ``retrofit.json``, ``retrofit.md``).
        epochs: training epochs of the two runs from scratch.
        finetune_epochs: fine-tuning epochs of the retrofitted model (default: ``epochs``).
        tolerance: the Jaccard gap to the QKV model that counts as "within".
        overrides: bundle settings for every run (``datalist``, ``preset``, ``img_size``, ``device``...).

    Returns:
        the result (also written to ``out/retrofit.json``): the three Jaccards, the retrofitted model's Jaccard per
        fine-tuning epoch (epoch 0: converted, not trained), ``epochs_to_target`` (``None`` when not reached) and
        ``gap`` (how far the best retrofitted Jaccard stayed from ``qkv - tolerance``; <= 0 when reached).
    """
    bundle = Path(bundle)
    out = Path(out)
    s = bundle_settings(bundle, overrides)
    qkv_bundle = bundle.parent / f"{s['arch']}_qkv"
    if s["attention"] not in ("kv", "kvpos"):
        raise RetrofitError(f"{bundle} is a {s['attention']!r} bundle; the measurement needs a KV bundle.")
    finetune_epochs = finetune_epochs or epochs
    common = {**overrides, "val_interval": 1, "mlflow": False, "progress": False}
    timing: dict[str, float] = {}

    # the runs from scratch validate after their last epoch only (validation costs more than a tiny epoch)
    scratch_runs = {**common, "val_interval": epochs, "max_epochs": epochs}
    start = time.perf_counter()
    qkv = train_bundle(qkv_bundle, out / "qkv", **scratch_runs)
    timing["qkv"] = time.perf_counter() - start
    start = time.perf_counter()
    scratch = train_bundle(bundle, out / "kv_scratch", **scratch_runs)
    timing["kv_scratch"] = time.perf_counter() - start

    start = time.perf_counter()
    init = out / "retrofit" / "kv_init.pt"
    report = convert_qkv_model(bundle, out / "qkv" / "model.pt", init, overrides)
    epoch0 = _validate(bundle, init, out / "retrofit" / "epoch0", common)
    tuned = train_bundle(
        bundle, out / "retrofit", **{**common, "max_epochs": finetune_epochs, "pretrained": str(init.resolve())}
    )
    timing["retrofit"] = time.perf_counter() - start

    j_qkv = qkv[-1]["val_jaccard"]
    curve = [epoch0] + [r["val_jaccard"] for r in tuned]
    target = j_qkv - tolerance
    reached = [e for e, j in enumerate(curve) if j >= target]
    result = {
        "arch": s["arch"],
        "attention": s["attention"],
        "preset": s["preset"],
        "img_size": s["img_size"],
        "epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "tolerance": tolerance,
        "qkv_jaccard": j_qkv,
        "kv_scratch_jaccard": scratch[-1]["val_jaccard"],
        "retrofit_jaccard": max(curve),
        "retrofit_curve": curve,
        "epochs_to_target": reached[0] if reached else None,
        "gap": target - max(curve),
        "dropped_queries": len(report.dropped),
        "seconds": timing,
    }
    write_text_atomic(out / "retrofit.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "retrofit.md", retrofit_table(result) + "\n")
    return result


def retrofit_table(result: Mapping[str, Any]) -> str:
    """The measurement as a Markdown table and one sentence on the epochs to the target."""
    name = f"{result['arch']} ({result['preset']}, {result['img_size']} px)"
    e, f = result["epochs"], result["finetune_epochs"]
    rows = [
        ["QKV, from scratch", f"{e}", f"{result['qkv_jaccard']:.4f}", f"{result['seconds']['qkv']:.0f}"],
        ["KV, from scratch", f"{e}", f"{result['kv_scratch_jaccard']:.4f}", f"{result['seconds']['kv_scratch']:.0f}"],
        [
            "KV, retrofitted from the QKV model",
            f"{f} (fine-tuning)",
            f"{result['retrofit_jaccard']:.4f}",
            f"{result['seconds']['retrofit']:.0f}",
        ],
    ]
    header = [name, "epochs", "val Jaccard (last; retrofit: best)", "wall s"]
    table = markdown_table(header, rows, ["left", "right", "right", "right"])
    curve = ", ".join(f"{j:.3f}" for j in result["retrofit_curve"])
    tol = result["tolerance"]
    if result["epochs_to_target"] is None:
        verdict = f"not within {tol} Jaccard of QKV after {f} fine-tuning epochs (short by {result['gap']:.4f})"
    else:
        verdict = f"within {tol} Jaccard of QKV after {result['epochs_to_target']} fine-tuning epoch(s)"
    return f"{table}\n\nRetrofitted KV per fine-tuning epoch (0: converted, not trained): {curve}; {verdict}."
