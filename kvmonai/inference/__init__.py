"""Fast inference: mixed precision, channels-last, exact network rewrites and the OpenVINO runtime (bf16, int8).

``kvmonai benchmark`` measures them; ``kvmonai quantize`` writes the int8 model (:mod:`kvmonai.quantize`).
"""

from kvmonai.inference.inferer import AutocastInferer, FastSliceInferer, autocast_call
from kvmonai.inference.optimize import (
    PRECISIONS,
    autocast_dtype,
    cpu_has_fast_bf16,
    fold_batch_norms,
    freeze_for_inference,
    inplace_activations,
    optimize_for_inference,
)
from kvmonai.inference.runtime import (
    INT8_MODEL_NAME,
    RUNTIME_PRECISIONS,
    RUNTIMES,
    RuntimeNetwork,
    cached_openvino_model,
    convert_to_openvino,
    network_fingerprint,
    openvino_precision,
)

__all__ = [
    "INT8_MODEL_NAME",
    "PRECISIONS",
    "RUNTIMES",
    "RUNTIME_PRECISIONS",
    "RuntimeNetwork",
    "AutocastInferer",
    "FastSliceInferer",
    "autocast_call",
    "autocast_dtype",
    "cached_openvino_model",
    "cpu_has_fast_bf16",
    "convert_to_openvino",
    "fold_batch_norms",
    "freeze_for_inference",
    "inplace_activations",
    "network_fingerprint",
    "openvino_precision",
    "optimize_for_inference",
]
