"""``kvmonai quantize``: int8 post-training quantisation of an inference bundle with NNCF, guarded by the validation
fold's Dice (:mod:`kvmonai.quantize.quantize`)."""

from kvmonai.quantize.quantize import *  # noqa: F403  (the package's API is the module's)
from kvmonai.quantize.quantize import __all__ as __all__
