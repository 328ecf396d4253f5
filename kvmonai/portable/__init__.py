"""The code an exported inference bundle carries with it, so that it runs with MONAI alone.

``kvmonai export`` copies the modules of this package, unchanged, into the exported bundle's ``scripts/`` folder
(the model-zoo convention for a bundle's own code), and its configs name them as ``scripts.<module>.<name>``. The
kvmonai package imports the same modules, so there is one copy of each transform, never a hand-kept second one.

Rules for every module here, checked by ``tests/bundle/test_export.py``:

- imports only the standard library, torch, numpy, MONAI, nibabel, pydicom and highdicom (the exported bundle's
  ``required_packages_version``), and sibling modules of this package by relative import;
- nothing is imported at package import time, so ``import scripts`` in a bundle is free.

Modules: :mod:`~kvmonai.portable.errors` (the base class of kvmonai's user-facing errors, and their one-line report
at the end of a bundle run), :mod:`~kvmonai.portable.transforms` (2.5D slice transforms, gain-robust intensity
scaling), :mod:`~kvmonai.portable.dicom` (DICOM series discovery and checks), :mod:`~kvmonai.portable.volume` (NIfTI
and DICOM loading into the training volumes' orientation), :mod:`~kvmonai.portable.dicom_seg` (DICOM Segmentation
output) and :mod:`~kvmonai.portable.network` (the exported network).
"""

#: the modules ``kvmonai export`` copies into a bundle's ``scripts/``
MODULES: tuple[str, ...] = ("errors", "transforms", "dicom", "volume", "dicom_seg", "network", "files")

__all__ = ["MODULES"]
