"""The bundles' inference runtimes: eager PyTorch, or the network converted to OpenVINO (bf16 where native, int8).

:class:`RuntimeNetwork` is what an inference bundle's evaluator calls. With ``runtime="torch"`` it calls the PyTorch
network as before. With ``runtime="openvino"`` it converts the loaded (and rewritten) network once, through
``torch.export`` and ``openvino.convert_model``, for the fixed slice batch the inferer feeds it, caches the OpenVINO
model next to the weights and runs OpenVINO's CPU plugin. Pre- and post-processing stay MONAI's.

The cache key is a SHA-256 over everything that shapes the converted model: the network's class and structure
(``repr``), every parameter and buffer, the input shape, the OpenVINO version and this module's format version. A
second run with the same weights and settings reads the cached model; changed weights, a changed preset or input
size, or another OpenVINO version convert again. Nothing is downloaded.

MONAI has no OpenVINO runtime of its own (``monai.bundle`` exports TorchScript, ONNX and TensorRT), so this module
provides it; the conversion and the CPU plugin are OpenVINO's, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kvmonai.utils import check_option

__all__ = [
    "INT8_MODEL_NAME",
    "RUNTIMES",
    "RUNTIME_PRECISIONS",
    "RuntimeNetwork",
    "cached_openvino_model",
    "convert_to_openvino",
    "network_fingerprint",
    "openvino_precision",
]

logger = logging.getLogger(__name__)

#: inference runtimes of the bundles' ``runtime`` setting
RUNTIMES: tuple[str, ...] = ("torch", "openvino")
#: precisions of the bundles' ``precision`` setting (``int8`` needs ``runtime: openvino`` and ``kvmonai quantize``)
RUNTIME_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
#: file stem of the quantised model that ``kvmonai quantize`` writes into the bundle's ``models/`` folder
INT8_MODEL_NAME = "model_int8"
#: bump when the cached files' layout or conversion changes, so that old caches are not used
_CACHE_FORMAT = 1


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:  # pragma: no cover - the extra is part of every install path
        raise ImportError(
            "runtime 'openvino' needs the openvino package: pip install -c constraints/cpu.txt -e '.[openvino]'"
        ) from e
    return openvino


def network_fingerprint(network: nn.Module, input_shape: Sequence[int]) -> str:
    """SHA-256 (hex) of what shapes a converted model: structure, every parameter and buffer, the input shape and the
    OpenVINO version.

    Args:
        network: the network as it will be converted (weights loaded, inference rewrites applied).
        input_shape: the full input shape, batch first.
    """
    ov = _openvino()
    digest = hashlib.sha256()
    digest.update(json.dumps([_CACHE_FORMAT, ov.__version__, torch.__version__, list(map(int, input_shape))]).encode())
    digest.update(type(network).__qualname__.encode())
    digest.update(repr(network).encode())
    for name, tensor in [*network.state_dict().items()]:
        digest.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def convert_to_openvino(network: nn.Module, input_shape: Sequence[int]) -> Any:
    """``network`` as an ``openvino.Model`` with the static input shape ``input_shape``.

    The network is exported with ``torch.export`` first: OpenVINO's plain tracing bakes a shape-dependent reshape of
    MONAI's SwinUNETR wrongly, the exported program converts every kvmonai network.

    Args:
        network: an eval-mode network.
        input_shape: ``(batch, channels, height, width)``.
    """
    ov = _openvino()
    example = torch.zeros(*input_shape)
    network = network.eval()
    with torch.no_grad():
        exported = torch.export.export(network, (example.contiguous(),))
        model = ov.convert_model(exported)
    model.reshape([int(s) for s in input_shape])
    return model


def cached_openvino_model(
    network: nn.Module, input_shape: Sequence[int], cache_dir: str | os.PathLike, fingerprint: str | None = None
) -> tuple[Any, Path, bool]:
    """The fp32 OpenVINO model of ``network``, read from ``cache_dir`` or converted once and saved there.

    Args:
        network: an eval-mode network (weights loaded, rewrites applied).
        input_shape: ``(batch, channels, height, width)``.
        cache_dir: the cache folder (a subfolder per :func:`network_fingerprint`).
        fingerprint: the network's fingerprint, when the caller has it already.

    Returns:
        ``(model, path of its .xml, whether it was converted now)``.
    """
    fingerprint = fingerprint or network_fingerprint(network, input_shape)
    folder = Path(cache_dir) / fingerprint[:32]
    path = folder / "model.xml"
    if path.is_file() and (folder / "model.bin").is_file():
        logger.info(f"OpenVINO: using the cached model {path}")
        return _openvino().Core().read_model(path), path, False
    logger.info(f"OpenVINO: converting the network for input {list(input_shape)} (once; cached in {folder})")
    model = convert_to_openvino(network, input_shape)
    _save_model_atomic(model, folder)
    return model, path, True


def openvino_precision(precision: str) -> tuple[str, str]:
    """The CPU plugin's inference precision for a bundle ``precision``, and why.

    ``"auto"`` and ``"bf16"`` give bf16 where the CPU runs it natively (OpenVINO lists ``BF16`` among the CPU's
    optimisation capabilities: AVX512-BF16 or AMX) and fp32 elsewhere; OpenVINO does not emulate bf16.

    Returns:
        ``("bf16" | "f32", reason)``.

    Raises:
        ValueError: for an unknown precision, or ``"fp16"`` (CPUs: use ``"bf16"``).
    """
    check_option("precision", precision, RUNTIME_PRECISIONS)
    if precision == "fp16":
        raise ValueError("precision 'fp16' is for GPUs; on the OpenVINO CPU runtime use 'auto', 'bf16' or 'int8'.")
    if precision == "fp32":
        return "f32", "fp32 as configured"
    capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return "bf16", "bf16: native on this CPU"
    return "f32", "fp32: this CPU has no native bf16 (no AVX512-BF16 or AMX), and OpenVINO does not emulate it"


class RuntimeNetwork(nn.Module):
    """The network an inference bundle's evaluator calls: eager PyTorch, or OpenVINO converted once and cached.

    With ``runtime="openvino"`` the first call converts the network as it is then (weights loaded, inference rewrites
    applied: the handlers run at the engine's start, before the first batch) for the batch shape
    ``(batch_size, *x.shape[1:])``; a smaller last batch of slices is zero-padded to that shape and the padding is
    dropped from the output. The model is cached under ``cache_dir`` by :func:`network_fingerprint`. With
    ``precision="int8"`` the quantised model written by ``kvmonai quantize`` (``<models>/model_int8.xml``) is used
    instead; it is refused when its recorded fingerprint is not that of the network now (other weights or settings).

    Args:
        network: the PyTorch network (the bundle's ``network``).
        runtime: ``"torch"`` or ``"openvino"``.
        precision: the bundle's ``precision``; for OpenVINO ``"auto"``/``"bf16"`` (bf16 where native, else fp32),
            ``"fp32"`` or ``"int8"``. The torch runtime's precision is applied by the inferer.
        batch_size: the slices per network call (the inferer's ``sw_batch_size``); the converted model's batch.
        cache_dir: where converted models are cached (a folder per fingerprint).
        int8_dir: the folder holding ``model_int8.xml``/``.bin``/``.json`` (the bundle's ``models/``).
        num_threads: OpenVINO inference threads (``None``: torch's thread count).

    Raises:
        ValueError: for an unknown runtime or precision, ``int8`` without ``openvino``, or ``batch_size < 1``.
    """

    def __init__(
        self,
        network: nn.Module,
        runtime: str = "torch",
        precision: str = "auto",
        batch_size: int = 16,
        cache_dir: str | os.PathLike = "models/openvino",
        int8_dir: str | os.PathLike = "models",
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.runtime = check_option("runtime", runtime, RUNTIMES)
        self.precision = check_option("precision", precision, RUNTIME_PRECISIONS)
        if precision == "int8" and runtime != "openvino":
            raise ValueError("precision 'int8' runs on OpenVINO: set runtime to 'openvino' (and run kvmonai quantize).")
        if runtime == "openvino" and precision == "fp16":
            openvino_precision(precision)  # raises: fp16 is for GPUs
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.network = network
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir)
        self.int8_dir = Path(int8_dir)
        self.num_threads = num_threads
        self.converted = False  # whether this instance converted (True) or read a cached/int8 model
        self.model_path: Path | None = None
        self._compiled: Any = None
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``network(x)``; on OpenVINO the result is fp32 on ``x``'s device."""
        if self.runtime == "torch":
            return self.network(x)
        shape = (self.batch_size, *x.shape[1:])
        if self._compiled is None or self._shape != shape:
            self._prepare(shape)
        n = x.shape[0]
        if n > self.batch_size:
            return torch.cat([self(part) for part in x.split(self.batch_size)])
        batch = x.detach().float().cpu().contiguous().numpy()
        if n < self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
        out = self._compiled(np.ascontiguousarray(batch))[0]
        return torch.from_numpy(np.array(out[:n], copy=True)).to(x.device)

    def _prepare(self, shape: tuple[int, ...]) -> None:
        ov = _openvino()
        core = ov.Core()
        self.network.eval()
        fingerprint = network_fingerprint(self.network, shape)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        config["INFERENCE_NUM_THREADS"] = int(self.num_threads or torch.get_num_threads())
        if self.precision == "int8":
            path = self.int8_dir / f"{INT8_MODEL_NAME}.xml"
            record = _read_int8_record(self.int8_dir)
            if record.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{path} was quantised from other weights or settings than this bundle's network now "
                    f"(input shape {list(shape)}); re-run: kvmonai quantize <bundle> --datalist <datalist.json>."
                )
            model = core.read_model(path)
            self.converted = False
            logger.info(f"OpenVINO: int8 model {path} (pooled Dice drop {record.get('dice_drop')} at quantisation)")
        else:
            model, path, self.converted = cached_openvino_model(self.network, shape, self.cache_dir, fingerprint)
            hint, why = openvino_precision(self.precision)
            config["INFERENCE_PRECISION_HINT"] = hint
            logger.info(f"OpenVINO: inference precision {why}")
        self.model_path = path
        self._compiled = core.compile_model(model, "CPU", config)
        self._shape = shape


def _read_int8_record(folder: Path) -> dict[str, Any]:
    path = folder / f"{INT8_MODEL_NAME}.json"
    if not (folder / f"{INT8_MODEL_NAME}.xml").is_file() or not path.is_file():
        raise FileNotFoundError(
            f"precision 'int8' needs {folder / INT8_MODEL_NAME}.xml and .json, which kvmonai quantize writes: "
            "kvmonai quantize <bundle> --datalist <datalist.json>."
        )
    return json.loads(path.read_text())


def _save_model_atomic(model: Any, folder: Path) -> None:
    """Save ``model.xml``/``model.bin`` into ``folder`` via a temporary folder renamed into place (never half)."""
    ov = _openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        if folder.exists():  # another process converted the same model meanwhile: keep theirs
            shutil.rmtree(tmp)
            return
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
