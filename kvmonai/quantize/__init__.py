"""``kvmonai quantize``: int8 post-training quantisation of an inference bundle with NNCF, guarded by the validation
fold's Dice (:mod:`kvmonai.quantize.quantize`)."""

from kvmonai.quantize.quantize import (
    QuantizationRefusedError,
    QuantizationReport,
    calibration_batches,
    install_int8_model,
    quantize_bundle,
    quantize_network,
)

__all__ = [
    "QuantizationRefusedError",
    "QuantizationReport",
    "calibration_batches",
    "install_int8_model",
    "quantize_bundle",
    "quantize_network",
]
