"""Import timm, including where the only torchvision wheel at hand was built for CUDA and the torch is a CPU build.

timm imports torchvision at import time (``timm.layers`` takes ``FrozenBatchNorm2d`` from ``torchvision.ops``).
PyPI's Linux torchvision wheels are CUDA builds; beside a CPU torch their compiled operators (``torchvision._C``)
cannot load. torchvision handles that for most operators, but ``torchvision/_meta_registrations.py`` (0.28) registers
fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` without checking, so ``import torchvision`` fails
with ``RuntimeError: operator torchvision::nms does not exist``. kvmonai uses no torchvision operator, so when (and
only when) that exact failure happens, :func:`import_timm` declares the schemas of those two operators and imports
again. The operators stay unimplemented: calling them raises torch's "no kernel" error. With a CPU torchvision (e.g.
from ``https://download.pytorch.org/whl/cpu``) or a CUDA torch nothing is declared.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from types import ModuleType

import torch

__all__ = ["TORCHVISION_SCHEMAS", "import_timm"]

#: the operators torchvision 0.28's meta registrations need to exist, and their schemas (torchvision/csrc/ops/nms.cpp)
TORCHVISION_SCHEMAS: dict[str, str] = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _forget(*packages: str) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        del sys.modules[name]


def import_timm() -> ModuleType:
    """The ``timm`` module (see the module docstring for the one torchvision case handled).

    Raises:
        ImportError: if timm is not installed, with the install command.
    """
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as err:
        if err.name not in ("timm", "torchvision"):
            raise
        raise ImportError(
            f"{err.name} is not installed; kvmonai's timm networks need it: pip install -c constraints/cpu.txt "
            "'kvmonai[timm]' (constraints/cpu.txt pins timm and torchvision)."
        ) from err
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
    _forget("timm", "torchvision")
    for name, schema in TORCHVISION_SCHEMAS.items():
        with contextlib.suppress(RuntimeError):  # declared already (by torchvision's library or an earlier call)
            torch.library.define(f"torchvision::{name}", schema)
    return importlib.import_module("timm")
