"""Whole-case inference benchmark: one 144-slice 266 x 266 scan through an inference bundle, file to file."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kvmonai.benchmark.timing import ResultRow
from kvmonai.paths import bundle_name, bundles_dir
from kvmonai.utils import as_flag, write_text_atomic

__all__ = ["SETTINGS", "CaseResult", "benchmark_case", "synthetic_case"]

#: inference settings compared, as overrides of the bundle's ``runtime``, ``precision``, ``channels_last`` and
#: ``fuse``: the fp32 eager baseline, the levers one by one, ``fast`` (the bundle's own defaults), and OpenVINO in its
#: default precision (bf16 where native, else fp32) and in int8
SETTINGS: dict[str, dict[str, object]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "fuse": False},
    "bf16": {"precision": "bf16", "channels_last": False, "fuse": False},
    "bf16+cl": {"precision": "bf16", "channels_last": True, "fuse": False},
    "fast": {},
    "openvino": {"runtime": "openvino", "precision": "auto"},
    "openvino-int8": {"runtime": "openvino", "precision": "int8"},
}


@dataclass
class CaseResult(ResultRow):
    """One bundle under one setting. ``case_s``: the inference engine's run, from reading the NIfTI to writing the
    mask; ``setup_s``: parsing the bundle and building the network (paid once per process, not per case)."""

    arch: str
    attention: str
    preset: str
    setting: str
    runtime: str
    precision: str
    channels_last: bool
    fuse: bool
    slices: int
    case_s: float
    setup_s: float
    per_slice_ms: float
    speedup: float
    mask_dice_vs_fp32: float | None


def synthetic_case(folder: str | os.PathLike, slices: int = 144, seed: int = 0) -> Path:
    """A synthetic 266 x 266 scan with ``slices`` slices as NIfTI (made once, reused); returns the image path."""
    from kvmonai.data import prepare_dataset, write_synthetic_dataset

    root = Path(folder)
    marker = root / "case.json"
    if marker.is_file():
        return root / json.loads(marker.read_text())["image"]
    shutil.rmtree(root, ignore_errors=True)
    write_synthetic_dataset(root / "raw", cases=1, seed=seed, days=1, slices=slices, progress=False)
    summary = prepare_dataset(root / "raw", root / "prepared", progress=False)
    image = json.loads(Path(summary.datalist).read_text())["training"][0]["image"]
    path = Path(summary.datalist).parent / image
    write_text_atomic(marker, json.dumps({"image": str(path.relative_to(root))}))
    return path


def _mask_dice(a: Path, b: Path) -> float:
    import nibabel as nib

    from kvmonai.metrics import pooled_dice

    return pooled_dice(np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj))


def _run_bundle(
    root: Path, case: Path, out_dir: Path, preset: str, size: int, device: str, options: dict[str, object]
) -> tuple[float, float, dict[str, object]]:
    """Run the inference workflow of bundle ``root`` on ``case``: setup seconds, run seconds, resolved settings."""
    from kvmonai.bundle import bundle_workflow, device_overrides

    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    workflow = bundle_workflow(
        root,
        ["inference.json"],
        "infer",
        logging=False,
        bundle_root=str(root),
        input_path=str(case),
        output_dir=str(out_dir),
        preset=preset,
        img_size=size,
        **device_overrides(device),
        **{"inferer#progress": False},
        **options,
    )
    workflow.evaluator  # noqa: B018 - parse the config and build the network before the clock starts
    setup = time.perf_counter() - start
    resolved = {
        key: workflow.parser.get_parsed_content(key) for key in ("runtime", "precision", "channels_last", "fuse")
    }
    start = time.perf_counter()
    workflow.run()
    elapsed = time.perf_counter() - start
    workflow.finalize()
    return setup, elapsed, resolved


def _int8_for_speed(root: Path, case: Path, preset: str, size: int) -> None:
    """Quantise the bundle copy's (random) network for the speed runs, calibrated on slices of the benchmark case.

    No accuracy guard: the weights are random, so only the speed of the int8 model means anything here; ``kvmonai
    quantize`` is the path that checks accuracy on a trained network.
    """
    import tempfile

    import openvino as ov

    from kvmonai.bundle import bundle_network
    from kvmonai.inference import INT8_MODEL_NAME, cached_openvino_model, network_fingerprint
    from kvmonai.quantize import calibration_batches, install_int8_model, quantize_network

    parser, network = bundle_network(root, {"preset": preset, "img_size": size})
    batch = int(parser.get_parsed_content("inferer").sw_batch_size)
    shape = [batch, int(parser.get_parsed_content("in_channels")), size, size]
    batches, slices, _ = calibration_batches(parser, [{"image": str(case)}], 32, shape[0], seed=0)
    fingerprint = network_fingerprint(network, shape)
    fp32 = cached_openvino_model(network, shape, parser.get_parsed_content("openvino_cache"), fingerprint)[0]
    int8 = quantize_network(fp32, batches)
    staging = Path(tempfile.mkdtemp(dir=root / "models", prefix=".int8."))
    try:
        ov.save_model(int8, staging / f"{INT8_MODEL_NAME}.xml", compress_to_fp16=False)
        record = {
            "fingerprint": fingerprint,
            "purpose": f"speed benchmark only: random weights, calibrated on {slices} slices of the benchmark case",
        }
        install_int8_model(root / "models", staging, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def benchmark_case(
    archs: Sequence[str],
    attention: str = "kv",
    preset: str = "paper",
    settings: Sequence[str] = ("fp32", "fast"),
    workdir: str | os.PathLike = "results/benchmark/case",
    bundles: str | os.PathLike | None = None,
    slices: int = 144,
    device: str = "cpu",
    progress: bool = True,
) -> list[CaseResult]:
    """Run each bundle's ``inference.json`` on the synthetic case under each setting and time it.

    Long on purpose: the whole-case measurement (file to file, every runtime of every pair) is one timed
    sequence whose order makes the runtimes comparable; its docstring lists every setting.

    The weights are a seeded random initialisation saved as the bundle's ``models/model.pt`` (speed does not depend
    on the values). Each (bundle, setting) gets a fresh workflow, so one setting's rewrites never leak into another.

    Args:
        archs: architectures whose ``<arch>_<attention>`` bundle is run.
        attention: attention variant.
        preset: network sizes (``"paper"``: 224 x 224 inputs).
        settings: names from :data:`SETTINGS`; the first is the reference of ``speedup`` and the mask agreement.
        workdir: scratch folder (the case, bundle copies, predictions).
        bundles: folder of the generated bundles (default: :func:`kvmonai.paths.bundles_dir`).
        slices: slices of the synthetic scan.
        device: ``"cpu"`` or a CUDA device.
        progress: show a tqdm progress bar.

    Returns:
        one :class:`CaseResult` per (architecture, setting).

    Raises:
        ValueError: for an unknown setting.
        FileNotFoundError: when a bundle is missing.
    """
    from tqdm.auto import tqdm

    from kvmonai.inference import autocast_dtype, openvino_precision
    from kvmonai.networks import PRESET_IMG_SIZE, create, save_atomic

    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {list(SETTINGS)}.")
    work = Path(workdir)
    image = synthetic_case(work / "data", slices=slices)
    warmup_case = synthetic_case(work / "warmup", slices=8)
    size = PRESET_IMG_SIZE[preset]
    results: list[CaseResult] = []
    bar = tqdm(total=len(archs) * len(settings), unit="run", desc="whole case", disable=not progress)
    for arch in archs:
        name = bundle_name(arch, attention)
        source = Path(bundles if bundles is not None else bundles_dir()) / name
        if not (source / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"bundle {source} not found; run `kvmonai bundles`.")
        root = work / "bundles" / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("runs", "models", "predictions", "eval"))
        torch.manual_seed(0)
        save_atomic(create(arch, attention, preset, img_size=size).state_dict(), root / "models" / "model.pt")
        reference: tuple[float, Path] | None = None

        if "openvino-int8" in settings:
            _int8_for_speed(root, image, preset, size)
        # one short untimed run first: imports and readers a first run would otherwise charge to the baseline; and
        # one per OpenVINO setting, which converts (or quantises) the network once, as a deployment does
        warm = work / "predictions" / name / "warmup"
        for setting in dict.fromkeys([settings[0], *[s for s in settings if "runtime" in SETTINGS[s]]]):
            _run_bundle(root, warmup_case, warm, preset, size, device, SETTINGS[setting])
        for setting in settings:
            options = SETTINGS[setting]
            out_dir = work / "predictions" / name / setting
            setup, elapsed, resolved = _run_bundle(root, image, out_dir, preset, size, device, options)
            mask = next(out_dir.glob("*.nii.gz"))
            dice = None if reference is None else _mask_dice(reference[1], mask)
            if reference is None:
                reference = (elapsed, mask)
            runtime = str(resolved["runtime"])
            if runtime == "openvino":
                precision = "int8" if resolved["precision"] == "int8" else openvino_precision(resolved["precision"])[0]
            else:
                dtype = autocast_dtype(str(resolved["precision"]), device)
                precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
            results.append(
                CaseResult(
                    arch=arch,
                    attention=attention,
                    preset=preset,
                    setting=setting,
                    runtime=runtime,
                    precision=precision.replace("f32", "fp32"),
                    channels_last=as_flag("channels_last", resolved["channels_last"]),
                    fuse=as_flag("fuse", resolved["fuse"]),
                    slices=slices,
                    case_s=elapsed,
                    setup_s=setup,
                    per_slice_ms=1000 * elapsed / slices,
                    speedup=reference[0] / elapsed,
                    mask_dice_vs_fp32=dice,
                )
            )
            bar.update(1)
    bar.close()
    return results
