"""Load inference inputs beyond the Kaggle layout into the form of the prepared volumes.

:func:`load_volume` accepts a NIfTI file, a DICOM series folder (or one DICOM file), or a folder of PNG slices
(Kaggle-named ``slice_SSSS_W_H_PW_PH.png`` or any other names, sorted naturally) and returns what
``LoadImaged`` + ``EnsureChannelFirstd`` give for a ``kvmonai prepare`` image: a ``float32`` ``MetaTensor`` of
shape ``(1, H, W, D)`` in orientation ``PLS``. NIfTI and DICOM go through
:func:`~kvmonai.portable.volume.load_nifti_or_dicom` (the loader exported bundles carry, with its DICOM series
checks); this module adds PNG folders, read with kvmonai's Kaggle
reader or MONAI's ``PILReader``, which exported bundles do not need.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.utils import SpaceKeys

from kvmonai.data.kaggle import SLICE_THICKNESS_MM, KaggleFormatError, parse_slice_filename, read_slice_png
from kvmonai.data.prepare import kaggle_affine
from kvmonai.portable.errors import InputFormatError
from kvmonai.portable.volume import (
    CANONICAL_AXCODES,
    RAS_AXIS_LABELS,
    LoadNiftiOrDicomd,
    load_nifti_or_dicom,
    to_canonical,
)

__all__ = ["CANONICAL_AXCODES", "RAS_AXIS_LABELS", "LoadVolumed", "load_volume"]

_KAGGLE_NAME = re.compile(r"slice_\d{4,}_\d+_\d+_[\d.]+_[\d.]+\.png")


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _load_png_folder(folder: Path, files: Sequence[Path], spacing: Sequence[float] | None) -> MetaTensor:
    if all(_KAGGLE_NAME.fullmatch(f.name) for f in files):
        infos = [parse_slice_filename(f) for f in files]
        order = sorted(range(len(files)), key=lambda i: infos[i].index)
        files = [files[i] for i in order]
        first = infos[order[0]]
        numbers = [infos[i].index for i in order]
        gaps = [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1]
        if gaps:
            a, b = gaps[0]
            raise KaggleFormatError(
                f"{folder}: slice numbers jump from {a} to {b} (a missing slice?); inference would stack the slices "
                "closer than they are, as kvmonai prepare refuses too. Add the missing slices or drop the scan."
            )
        for f, info in zip(files, (infos[i] for i in order), strict=True):
            if (info.width, info.height, info.pixel_width, info.pixel_height) != (
                first.width,
                first.height,
                first.pixel_width,
                first.pixel_height,
            ):
                raise KaggleFormatError(f"{f}: geometry differs from {files[0].name}; one folder must hold one scan.")
        slices = [read_slice_png(f) for f in files]
        sp = tuple(spacing) if spacing is not None else (first.pixel_height, first.pixel_width, SLICE_THICKNESS_MM)
    else:
        from monai.data import PILReader
        from monai.transforms import LoadImage

        files = sorted(files, key=lambda f: _natural_key(f.name))
        loader = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True)
        slices = []
        for f in files:
            try:
                arr = np.asarray(loader(f))
            except Exception as e:  # PIL raises many types for broken files
                raise InputFormatError(f"{f}: unreadable PNG ({e}); re-export the file.") from e
            if arr.ndim != 2:
                raise ValueError(f"{f}: shape {arr.shape}, expected a single-channel (grayscale) image.")
            if slices and arr.shape != slices[0].shape:
                raise ValueError(f"{f}: size {arr.shape} differs from {files[0].name} {slices[0].shape}.")
            slices.append(arr)
        sp = tuple(spacing) if spacing is not None else (1.0, 1.0, SLICE_THICKNESS_MM)
    if len(sp) != 3:
        raise ValueError(f"spacing must be (row, column, slice) in mm, got {sp}.")
    vol = torch.from_numpy(np.stack(slices, axis=-1).astype(np.float32))[None]
    meta = {"filename_or_obj": str(folder), "space": SpaceKeys.RAS.value, "original_channel_dim": "no_channel"}
    return to_canonical(MetaTensor(vol, affine=torch.as_tensor(kaggle_affine(sp)), meta=meta), folder)


def load_volume(
    path: str | os.PathLike,
    dicom_reader: str = "itk",
    spacing: Sequence[float] | None = None,
    series: str | int | None = None,
) -> MetaTensor:
    """Load a NIfTI file, a DICOM series or a PNG folder as a ``(1, H, W, D)`` float32 volume in ``PLS``: PNG
    slices here, everything else through :func:`~kvmonai.portable.volume.load_nifti_or_dicom`, whose result and
    errors (a missing ``path`` included) it keeps.

    Args:
        path: a ``.nii``/``.nii.gz`` file, a ``.dcm`` file, a folder of DICOM files (one series) or a folder of PNG
            slices.
        dicom_reader: ``"itk"`` (MONAI ``ITKReader``) or ``"pydicom"`` (MONAI ``PydicomReader``).
        spacing: ``(row, column, slice)`` spacing in mm for PNG folders; default from Kaggle file names, else
            ``(1, 1, 3)``. Ignored for NIfTI and DICOM, which carry their own geometry.
        series: the SeriesInstanceUID or SeriesNumber to read when a DICOM folder holds several series.

    Returns:
        a ``MetaTensor`` whose ``affine`` maps voxels to RAS millimetres.

    Raises:
        InputFormatError: (a ``ValueError``) when ``path`` is no PNG, NIfTI, NRRD or DICOM input.
        KaggleFormatError: (a ``ValueError``, :mod:`kvmonai.data.kaggle`) for malformed Kaggle PNGs.
        ValueError: when a PNG volume's spacing is not ``(row, column, slice)``; the errors of
            :func:`~kvmonai.portable.volume.load_nifti_or_dicom` otherwise.
    """
    p = Path(path)
    if p.is_file() and p.name.lower().endswith(".png"):
        return _load_png_folder(p.parent, [p], spacing)
    if p.is_dir():
        pngs = [e for e in sorted(p.iterdir()) if e.is_file() and e.suffix.lower() == ".png" and e.name[0] != "."]
        if pngs:
            return _load_png_folder(p, pngs, spacing)
    try:
        return load_nifti_or_dicom(p, dicom_reader, series)
    except InputFormatError as e:
        if "not a NIfTI file" not in str(e):
            raise
        if p.is_dir():
            raise InputFormatError(f"{p}: folder holds neither PNG slices nor DICOM files.") from None
        raise InputFormatError(f"{p}: not a NIfTI (.nii/.nii.gz), NRRD, DICOM or PNG file.") from None


class LoadVolumed(LoadNiftiOrDicomd):
    """Dictionary transform around :func:`load_volume` (NIfTI, DICOM and PNG folders), for inference configs:
    :class:`~kvmonai.portable.volume.LoadNiftiOrDicomd` with PNG folders added; ``keys``, ``dicom_reader``,
    ``series`` and ``allow_missing_keys`` are the parent's arguments.

    Args:
        spacing: spacing for PNG folders (see :func:`load_volume`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        dicom_reader: str = "itk",
        spacing: Sequence[float] | None = None,
        series: str | int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, dicom_reader, series, allow_missing_keys)
        self.spacing = spacing

    def load(self, path: str | os.PathLike) -> MetaTensor:
        """One input as a volume: PNG folders here, NIfTI and DICOM through the portable loader."""
        return load_volume(path, self.dicom_reader, self.spacing, self.series)
