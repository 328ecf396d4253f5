"""Load a NIfTI volume or a DICOM series into the form the networks were trained on: ``(1, H, W, D)`` in ``PLS``.

Training volumes (``kvmonai prepare``) are float32 arrays of rows x columns x slices in orientation ``PLS`` (rows
posterior, columns patient-left, slices superior), so that ``[0, ..., z]`` looks like an axial slice in
radiological display. :func:`load_nifti_or_dicom` reads NIfTI with MONAI's ``NibabelReader`` and DICOM with MONAI's
``ITKReader`` (default) or ``PydicomReader``, after :func:`~kvmonai.portable.dicom.find_series` has checked that
the DICOM input is one regular series, and reorients with MONAI's ``Orientation``.

DICOM volumes carry two extra metadata items, ``dicom_source`` (the file or folder given) and ``dicom_series``
(the SeriesInstanceUID read), which :class:`~kvmonai.portable.dicom_seg.SaveDicomSegd` uses to reference the source
images. MONAI's ``LoadImage`` alone would read a folder of two series as one (ITK) or mix them (pydicom), which is
why this loader exists.

This is the loader an exported bundle carries. kvmonai's own loader, :func:`kvmonai.data.load_volume` and
:class:`kvmonai.data.LoadVolumed` (what the bundles' ``inference.json`` names), adds folders of PNG slices and
passes every other input to :func:`load_nifti_or_dicom`; ``kvmonai export`` replaces it by
:class:`LoadNiftiOrDicomd`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .dicom import DicomInputError, find_series, is_dicom_file
from .errors import InputFormatError, InputNotFoundError

__all__ = [
    "CANONICAL_AXCODES",
    "DICOM_SERIES_KEY",
    "DICOM_SOURCE_KEY",
    "NIFTI_SUFFIXES",
    "RAS_AXIS_LABELS",
    "LoadNiftiOrDicomd",
    "load_nifti_or_dicom",
    "to_canonical",
]

#: orientation of every loaded volume (the same as the prepared training volumes)
CANONICAL_AXCODES: str = "PLS"
#: axis letters of MONAI's RAS affines (as in ``nibabel.aff2axcodes``), for ``Orientation(axcodes, labels=...)``;
#: given explicitly, they keep MONAI from reading a ``"space"`` metadata item of ``LPS`` as flipped axes
RAS_AXIS_LABELS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))
#: metadata keys of a DICOM volume: the file or folder given, and the SeriesInstanceUID read
DICOM_SOURCE_KEY = "dicom_source"
DICOM_SERIES_KEY = "dicom_series"
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: NRRD, as 3D Slicer saves volumes and segmentations and MONAI Label keeps labels fetched from a PACS
NRRD_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr")
_READERS = {"itk": "ITKReader", "pydicom": "PydicomReader"}


def _reader(dicom_reader: str) -> str:
    """MONAI's reader class name for ``dicom_reader``; raises ``ValueError`` for another value."""
    if dicom_reader not in _READERS:
        raise ValueError(f"dicom_reader must be one of {sorted(_READERS)}, got {dicom_reader!r}.")
    return _READERS[dicom_reader]


def to_canonical(img: torch.Tensor, source: str | os.PathLike) -> MetaTensor:
    """A channel-first 2D or 3D ``MetaTensor`` as a float32 ``(1, H, W, D)`` volume in ``PLS``.

    Args:
        img: what MONAI's ``LoadImage(ensure_channel_first=True)`` returned.
        source: the input, for messages.

    Raises:
        ValueError: for several channels, other than 2 or 3 spatial dimensions, or NaN/infinite voxels.
    """
    from monai.transforms import Orientation

    if not isinstance(img, MetaTensor):
        raise TypeError("internal: expected a MetaTensor from LoadImage.")
    if img.shape[0] != 1:
        raise ValueError(
            f"{source}: {img.shape[0]} channels; expected a single-channel grayscale volume (select one channel first)."
        )
    if img.ndim == 3:  # one 2D slice -> depth 1
        img = img.unsqueeze(-1)
        affine = torch.eye(4, dtype=torch.float64)
        affine[:2, :2] = img.affine[:2, :2]
        affine[:2, 3] = img.affine[:2, 2]
        img.affine = affine
    if img.ndim != 4:
        raise ValueError(f"{source}: {img.ndim - 1} spatial dimensions; expected a 2D slice or a 3D volume.")
    img = Orientation(axcodes=CANONICAL_AXCODES, labels=RAS_AXIS_LABELS)(img.float())
    bad = int((~torch.isfinite(img.as_tensor())).sum())
    if bad:
        raise ValueError(
            f"{source}: {bad} of {img.numel()} voxels are NaN or infinite; fix the file (e.g. replace them with 0 "
            "using numpy.nan_to_num) before inference."
        )
    return img


def _read(reader: str, path: Path) -> MetaTensor:
    from monai.transforms import LoadImage

    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(path)


def _load_dicom(path: Path, reader: str, series: str | int | None) -> MetaTensor:
    found = find_series(path, series)
    try:
        if path.is_file() or found.extra_files == 0:
            img = _read(reader, path)
        else:  # MONAI reads a folder as one series: read the chosen one from a folder of links to its files
            with tempfile.TemporaryDirectory(prefix="kvmonai-series-") as tmp:
                for i, f in enumerate(found.files):
                    os.symlink(f.resolve(), Path(tmp) / f"{i:05d}.dcm")
                img = _read(reader, Path(tmp))
    except Exception as e:  # readers raise many types on broken files
        raise DicomInputError(f"{path}: {reader} could not read {found.label()} ({e}).") from e
    if img.ndim == 4 and img.shape[-1] != len(found.files):
        raise DicomInputError(
            f"{path}: {reader} read {img.shape[-1]} slices of {found.label()}, which has {len(found.files)} files."
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_grid(path, reader, found.label(), affine, found.affine(), len(found.files) == 1)
    img.meta["filename_or_obj"] = str(path)
    img.meta[DICOM_SOURCE_KEY] = str(path)
    img.meta[DICOM_SERIES_KEY] = found.uid
    return to_canonical(img, path)


def _check_grid(
    path: Path, reader: str, label: str, affine: np.ndarray, expected: np.ndarray, single_slice: bool
) -> None:
    """Refuse a volume whose voxel grid is not the series' grid (up to axis order and direction).

    The reader's affine must map voxel centres onto the voxel centres of the grid the headers define, i.e.
    ``inv(expected) @ affine`` is a signed permutation with an integer shift. MONAI's ``PydicomReader`` falls back
    to an identity affine for some oblique series, which this catches before a mask is put in the wrong place.
    """
    n = affine.shape[0] - 1
    full = np.eye(4)
    full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
    if single_slice:  # the slice axis' length is a convention (1 mm, thickness...), not geometry: match it
        normal = expected[:3, 2] / np.linalg.norm(expected[:3, 2])
        axis = int(np.argmax(np.abs(normal @ full[:3, :3])))
        full[:3, axis] *= np.linalg.norm(expected[:3, 2]) / np.linalg.norm(full[:3, axis])
    rel = np.linalg.inv(expected) @ full
    lin, shift = rel[:3, :3], rel[:3, 3]
    ok = np.allclose(np.abs(lin).sum(axis=0), 1, atol=1e-3) and np.allclose(np.abs(lin).max(axis=0), 1, atol=1e-3)
    if not ok or not np.allclose(shift, np.rint(shift), atol=1e-2):
        raise DicomInputError(
            f"{path}: {reader} returned a geometry that does not match the headers of {label} (affine "
            f"{np.round(affine, 3).tolist()}, the headers give {np.round(expected, 3).tolist()}); read it with "
            "dicom_reader 'itk'."
        )


def load_nifti_or_dicom(
    path: str | os.PathLike, dicom_reader: str = "itk", series: str | int | None = None
) -> MetaTensor:
    """Load a NIfTI file or a DICOM series (folder or single file) as a ``(1, H, W, D)`` float32 volume in ``PLS``.

    Args:
        path: a ``.nii``/``.nii.gz`` file, a ``.nrrd``/``.nhdr`` file (read by ITK), a DICOM file, or a folder of
            DICOM files.
        dicom_reader: ``"itk"`` (MONAI ``ITKReader``) or ``"pydicom"`` (MONAI ``PydicomReader``).
        series: the SeriesInstanceUID or SeriesNumber to read when a DICOM folder holds several series.

    Returns:
        a ``MetaTensor`` whose ``affine`` maps voxels to RAS millimetres.

    Raises:
        InputNotFoundError: (a ``FileNotFoundError``) when ``path`` does not exist.
        InputFormatError: (a ``ValueError``) when the input kind is not recognised or its reader fails.
        DicomInputError: for a DICOM input that is not one regular series (see
            :func:`~kvmonai.portable.dicom.find_series`).
        ValueError: when the volume is not single-channel 2D/3D, or holds NaN/inf voxels.
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{p}: no such file or folder.")
    reader = _reader(dicom_reader)
    for suffixes, file_reader in ((NIFTI_SUFFIXES, "NibabelReader"), (NRRD_SUFFIXES, "ITKReader")):
        if p.is_file() and p.name.lower().endswith(suffixes):
            try:
                img = _read(file_reader, p)
            except Exception as e:  # readers raise many types on broken files
                raise InputFormatError(f"{p}: {file_reader} could not read the file ({e}).") from e
            return to_canonical(img, p)
    if (p.is_file() and is_dicom_file(p)) or (p.is_dir() and any(is_dicom_file(e) for e in p.iterdir() if e.is_file())):
        return _load_dicom(p, reader, series)
    raise InputFormatError(
        f"{p}: not a NIfTI file (.nii/.nii.gz), an NRRD file, a DICOM file or a folder of DICOM files."
    )


class LoadNiftiOrDicomd(MapTransform):
    """Dictionary transform around :func:`load_nifti_or_dicom`, for inference configs.

    Args:
        keys: keys holding paths.
        dicom_reader: ``"itk"`` or ``"pydicom"``.
        series: the DICOM series to read from a folder with several (SeriesInstanceUID or SeriesNumber).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dicom_reader: str = "itk",
        series: str | int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        _reader(dicom_reader)  # validates early
        self.dicom_reader = dicom_reader
        self.series = series

    def load(self, path: str | os.PathLike) -> MetaTensor:
        """One input as a volume (subclasses add input kinds here)."""
        return load_nifti_or_dicom(path, self.dicom_reader, self.series)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key.

        Args:
            data: the sample with paths.

        Returns:
            a copy with the paths replaced by volumes.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key])
        return d
