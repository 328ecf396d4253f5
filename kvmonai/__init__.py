"""kvmonai: key-value attention for medical image segmentation transformers, on MONAI.

Borji's key-value (KV) attention drops the query projection of self-attention (Q := K). This package provides the
attention family (``kvmonai.networks.blocks``), segmentation networks using it, complexity accounting, data
handling for the UW-Madison GI Tract MRI dataset, MONAI bundles and the comparison study.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
