"""Post-training int8 quantisation of an inference bundle with NNCF, guarded by the validation fold's Dice.

:func:`quantize_bundle` builds the bundle's network exactly as ``configs/inference.json`` runs it (weights loaded,
inference rewrites applied), converts it to OpenVINO for the inferer's slice batch, and calibrates NNCF's
post-training quantisation on slices drawn from the training split (the bundle's own preprocessing). NNCF's
transformer scheme is used: it quantises the weights and inputs of the Linear and convolution layers (and SmoothQuant
balances their activation outliers), and leaves softmax, normalisations, GELU, the fused attention
(``ScaledDotProductAttention``: the ``Q K^T`` and ``A V`` products) and KV+Pos's temperature and key bias in float.

The int8 model is then evaluated against the fp32 OpenVINO model by running the bundle's inference on the validation
fold with each: pooled Dice of both against the labels, and the fraction of voxels where the masks differ. When the
Dice drops by more than ``max_drop`` nothing is written and :class:`QuantizationRefusedError` says by how much.
Otherwise ``models/model_int8.xml``/``.bin`` and ``models/model_int8.json`` (what was done and measured) are moved
into place together. ``precision: int8`` (with ``runtime: openvino``) then selects the model.

NNCF and OpenVINO do the quantisation and the int8 inference; this module only feeds them the bundle's data and
checks the result, which neither library can do for a MONAI bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvmonai.bundle import bundle_network, bundle_workflow
from kvmonai.data import load_datalist, split_fold
from kvmonai.inference import INT8_MODEL_NAME, cached_openvino_model, network_fingerprint
from kvmonai.utils import KVMonaiError, write_text_atomic

__all__ = [
    "QuantizationRefusedError",
    "QuantizationReport",
    "calibration_batches",
    "install_int8_model",
    "quantize_bundle",
    "quantize_network",
]

logger = logging.getLogger(__name__)


class QuantizationRefusedError(KVMonaiError, RuntimeError):
    """The int8 model lost more accuracy than allowed; nothing was written."""


@dataclass
class QuantizationReport:
    """What :func:`quantize_bundle` did and measured (also written as ``models/model_int8.json``)."""

    bundle: str
    fingerprint: str
    input_shape: list[int]
    calibration_slices: int
    calibration_volumes: int
    validation_volumes: int
    fold: int
    scheme: str
    dice_fp32: float
    dice_int8: float
    dice_drop: float
    max_drop: float
    voxels_differing: float
    quantized_inputs: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def calibration_batches(
    parser: Any, items: Sequence[Mapping[str, Any]], subset: int, batch: int, seed: int
) -> tuple[list[np.ndarray], int, int]:
    """``subset`` slices (rounded up to whole batches of ``batch``) spread over the volumes ``items``, through the
    bundle's ``preprocessing``.

    Returns:
        the batches ``(batch, C, H, W)``, the number of slices and the number of volumes they come from.
    """
    rng = np.random.default_rng(seed)
    preprocessing = parser.get_parsed_content("preprocessing")
    per_volume = max(1, -(-subset // len(items)))
    slices: list[np.ndarray] = []
    volumes = 0
    for item in items:
        volumes += 1
        image = preprocessing({"image": item["image"]})["image"]  # (C, H, W, D)
        depth = image.shape[-1]
        chosen = rng.choice(depth, size=min(per_volume, depth), replace=False)
        slices += [np.asarray(image[..., int(k)], dtype=np.float32) for k in sorted(chosen)]
        if len(slices) >= subset:
            break
    slices = slices[:subset]
    for i in range(-len(slices) % batch):  # whole batches: repeat slices from the start
        slices.append(slices[i])
    batches = [np.stack(slices[i : i + batch]) for i in range(0, len(slices), batch)]
    return batches, len(slices), volumes


def _infer_masks(bundle: Path, images: Sequence[str], out: Path, overrides: Mapping[str, Any]) -> list[np.ndarray]:
    """Run the bundle's inference on ``images`` into ``out``; returns the saved masks ``(H, W, D, 3)``."""
    import nibabel as nib

    settings = {"bundle_root": str(bundle), "inferer#progress": False, **overrides}
    wf = bundle_workflow(
        bundle, ["inference.json"], "infer", logging=False, input_path=list(images), output_dir=str(out), **settings
    )
    wf.run()
    wf.finalize()
    masks = []
    for image in images:
        name = Path(image).name.split(".")[0]
        found = sorted(out.glob(f"{name}_seg.nii*"))
        if not found:
            raise FileNotFoundError(f"inference wrote no mask for {image} into {out}.")
        masks.append(np.asarray(nib.load(found[0]).dataobj) > 0)
    return masks


def quantize_network(fp32_model: Any, batches: Sequence[np.ndarray]) -> Any:
    """NNCF post-training quantisation of an OpenVINO model with its transformer scheme, calibrated on ``batches``.

    ``model_type=TRANSFORMER`` keeps softmax, normalisations and activations in float, applies SmoothQuant to the
    Linear inputs and fast bias correction; OpenVINO's fused ``ScaledDotProductAttention`` is not quantised.
    """
    import nncf

    return nncf.quantize(
        fp32_model, nncf.Dataset(list(batches)), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )


def install_int8_model(models: str | os.PathLike, staging: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Move a staged ``model_int8.xml``/``.bin`` from ``staging`` into ``models`` with its ``record`` JSON.

    The old record goes first and the new one comes last, so a reader never pairs new weights with an old record
    (the runtime refuses a model without a record whose fingerprint matches).

    Returns:
        the installed ``.xml`` path.
    """
    models, staging = Path(models), Path(staging)
    _write_json(staging / f"{INT8_MODEL_NAME}.json", record)
    (models / f"{INT8_MODEL_NAME}.json").unlink(missing_ok=True)
    for suffix in (".xml", ".bin", ".json"):
        os.replace(staging / f"{INT8_MODEL_NAME}{suffix}", models / f"{INT8_MODEL_NAME}{suffix}")
    return models / f"{INT8_MODEL_NAME}.xml"


def _quantized_inputs(model: Any) -> dict[str, int]:
    """How many inputs of each operation type NNCF quantised (FakeQuantize consumers)."""
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            for target in op.output(0).get_target_inputs():
                kind = target.get_node().get_type_name()
                counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def quantize_bundle(
    bundle: str | os.PathLike,
    datalist: str | os.PathLike,
    subset: int = 128,
    max_drop: float = 0.01,
    fold: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> QuantizationReport:
    """Quantise ``bundle``'s network to int8 with NNCF and keep it only if the validation Dice holds.

    Long on purpose: the checks, calibration, the accuracy comparison and the refusal happen in this order,
    and nothing is written before the decision; split, that guarantee would be spread over helpers.

    Args:
        bundle: the bundle folder (its ``models/model.pt`` or the ``weights`` override is quantised).
        datalist: a ``kvmonai prepare`` datalist; its training split calibrates, its validation fold evaluates.
        subset: number of calibration slices (NNCF's ``subset_size`` counts batches of the inferer's size).
        max_drop: the largest pooled-Dice drop (fp32 minus int8, OpenVINO both) that is accepted.
        fold: the validation fold (default: the bundle's ``train.json`` ``fold``, else 0).
        seed: seed of the slice choice.
        overrides: inference config ids and values (``preset``, ``img_size``, ``weights``...).

    Returns:
        the report, also saved as ``models/model_int8.json``.

    Raises:
        ValueError: for a ``subset`` < 1, a ``max_drop`` outside [0, 1], a bundle folder or datalist that does not
            exist, or a fold without entries.
        QuantizationRefusedError: when the Dice drops by more than ``max_drop`` (nothing is written).
    """
    import nncf
    import openvino as ov

    from kvmonai.metrics import pooled_dice  # looked up per call, so that a test can stand in for the metric

    root = Path(bundle)
    if not (root / "configs" / "inference.json").is_file():
        raise ValueError(f"{root} is not a bundle folder (no configs/inference.json).")
    if not Path(datalist).is_file():
        raise ValueError(f"--datalist {datalist} does not exist; write one with kvmonai prepare.")
    if int(subset) < 1:
        raise ValueError(f"--subset must be >= 1 slice, got {subset}.")
    if not 0.0 <= float(max_drop) <= 1.0:
        raise ValueError(f"--max-drop must be in [0, 1], got {max_drop}.")
    overrides = dict(overrides or {})
    if fold is None:
        train_config = root / "configs" / "train.json"
        fold = int(json.loads(train_config.read_text()).get("fold", 0)) if train_config.is_file() else 0
    train, val = split_fold(load_datalist(datalist), int(fold))
    if not train:
        raise ValueError(f"{datalist}: fold {fold} leaves no training volume to calibrate on.")

    parser, network = bundle_network(root, overrides)
    batch = int(parser.get_parsed_content("inferer").sw_batch_size)
    size = parser.get_parsed_content("img_size")
    shape = [batch, int(parser.get_parsed_content("in_channels")), int(size), int(size)]
    fingerprint = network_fingerprint(network, shape)
    batches, n_slices, n_volumes = calibration_batches(parser, train, int(subset), batch, seed)
    logger.info(f"quantize: {n_slices} calibration slices from {n_volumes} training volumes, input {shape}")

    # the fp32 model goes into the runtime's cache, where the fp32 evaluation below (and later inference) reads it
    cache = parser.get_parsed_content("openvino_cache")
    int8_model = quantize_network(cached_openvino_model(network, shape, cache, fingerprint)[0], batches)

    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=models, prefix=".int8."))
    try:
        ov.save_model(int8_model, staging / f"{INT8_MODEL_NAME}.xml", compress_to_fp16=False)
        # the fingerprint lets the runtime load the staged model for the evaluation below
        _write_json(staging / f"{INT8_MODEL_NAME}.json", {"fingerprint": fingerprint, "status": "evaluating"})
        images = [item["image"] for item in val]
        truth = [np.asarray(_load_label(item["label"])) > 0 for item in val]
        common = {**overrides, "runtime": "openvino", "int8_dir": str(staging)}
        fp32 = _infer_masks(root, images, staging / "fp32", {**common, "precision": "fp32"})
        int8 = _infer_masks(root, images, staging / "int8", {**common, "precision": "int8"})
        # volumes differ in size: pool their voxels
        flat_truth = np.concatenate([t.reshape(-1) for t in truth])
        dice_fp32 = pooled_dice(np.concatenate([m.reshape(-1) for m in fp32]), flat_truth)
        dice_int8 = pooled_dice(np.concatenate([m.reshape(-1) for m in int8]), flat_truth)
        report = QuantizationReport(
            bundle=root.name,
            fingerprint=fingerprint,
            input_shape=shape,
            calibration_slices=n_slices,
            calibration_volumes=n_volumes,
            validation_volumes=len(val),
            fold=int(fold),
            scheme="nncf.quantize(model_type=TRANSFORMER): SmoothQuant and fast bias correction (NNCF defaults)",
            dice_fp32=dice_fp32,
            dice_int8=dice_int8,
            dice_drop=dice_fp32 - dice_int8,
            max_drop=float(max_drop),
            voxels_differing=float(np.mean([np.mean(a != b) for a, b in zip(fp32, int8, strict=True)])),
            quantized_inputs=_quantized_inputs(int8_model),
            versions={"openvino": ov.__version__, "nncf": nncf.__version__, "torch": torch.__version__},
        )
        if report.dice_drop > float(max_drop):
            raise QuantizationRefusedError(
                f"int8 lost {report.dice_drop:.4f} pooled Dice on fold {fold} (fp32 {report.dice_fp32:.4f}, int8 "
                f"{report.dice_int8:.4f}; {100 * report.voxels_differing:.2f} % of voxels differ), more than "
                f"--max-drop {max_drop}. Nothing was written; keep the fp32/bf16 runtime, or calibrate on more "
                "slices (--subset)."
            )
        install_int8_model(models, staging, asdict(report))
        logger.info(
            f"quantize: wrote {models / INT8_MODEL_NAME}.xml; pooled Dice fp32 {report.dice_fp32:.4f}, int8 "
            f"{report.dice_int8:.4f} (drop {report.dice_drop:+.4f}), {100 * report.voxels_differing:.2f} % "
            "voxels differ"
        )
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_label(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
