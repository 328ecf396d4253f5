"""Load inference inputs beyond the Kaggle layout into the form of the prepared volumes.

:func:`load_volume` accepts a NIfTI file, a DICOM series folder (or one DICOM file), or a folder of PNG slices
(Kaggle-named ``slice_SSSS_W_H_PW_PH.png`` or any other names, sorted naturally) and returns what
``LoadImaged`` + ``EnsureChannelFirstd`` give for a ``kvmonai prepare`` image: a ``float32`` ``MetaTensor`` of
shape ``(1, H, W, D)`` in orientation ``PLS`` (rows posterior, columns patient-left, slices superior), so that
``[0, ..., z]`` looks like an axial slice in radiological display. NIfTI goes through MONAI's ``NibabelReader``,
DICOM through ``ITKReader`` (default) or ``PydicomReader``, generic PNGs through ``PILReader``; everything is then
reoriented with MONAI's ``Orientation``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import SpaceKeys

from kvmonai.data.kaggle import SLICE_THICKNESS_MM, KaggleFormatError, parse_slice_filename, read_slice_png
from kvmonai.data.prepare import ORIENTATION, kaggle_affine

__all__ = ["CANONICAL_AXCODES", "RAS_AXIS_LABELS", "LoadVolumed", "load_volume"]

#: orientation of every loaded volume (same as the prepared NIfTI files)
CANONICAL_AXCODES: str = "".join(ORIENTATION)
#: axis letters of MONAI's RAS affines (as in ``nibabel.aff2axcodes``), for ``Orientation(axcodes, labels=...)``;
#: given explicitly, they keep MONAI from reading a ``"space"`` metadata item of ``LPS`` as flipped axes
RAS_AXIS_LABELS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))
_KAGGLE_NAME = re.compile(r"slice_\d{4,}_\d+_\d+_[\d.]+_[\d.]+\.png")
_NIFTI = (".nii", ".nii.gz")


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _finish(img: torch.Tensor, source: Path) -> MetaTensor:
    """Reorient to PLS, cast to float32 and reject non-finite voxels."""
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


def _load_png_folder(folder: Path, files: Sequence[Path], spacing: Sequence[float] | None) -> MetaTensor:
    if all(_KAGGLE_NAME.fullmatch(f.name) for f in files):
        infos = [parse_slice_filename(f) for f in files]
        order = sorted(range(len(files)), key=lambda i: infos[i].index)
        files = [files[i] for i in order]
        first = infos[order[0]]
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
                raise ValueError(f"{f}: unreadable PNG ({e}); re-export the file.") from e
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
    return _finish(MetaTensor(vol, affine=torch.as_tensor(kaggle_affine(sp)), meta=meta), folder)


def load_volume(
    path: str | os.PathLike, dicom_reader: str = "itk", spacing: Sequence[float] | None = None
) -> MetaTensor:
    """Load a NIfTI file, a DICOM series or a PNG folder as a ``(1, H, W, D)`` float32 volume in ``PLS``.

    Args:
        path: a ``.nii``/``.nii.gz`` file, a ``.dcm`` file, a folder of DICOM files (one series) or a folder of PNG
            slices.
        dicom_reader: ``"itk"`` (MONAI ``ITKReader``) or ``"pydicom"`` (MONAI ``PydicomReader``).
        spacing: ``(row, column, slice)`` spacing in mm for PNG folders; default from Kaggle file names, else
            ``(1, 1, 3)``. Ignored for NIfTI and DICOM, which carry their own geometry.

    Returns:
        a ``MetaTensor`` whose ``affine`` maps voxels to RAS millimetres.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the input kind is not recognised, is not single-channel 2D/3D, or holds NaN/inf voxels
            (:class:`~kvmonai.data.kaggle.KaggleFormatError` for malformed Kaggle PNGs).
    """
    from monai.transforms import LoadImage

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder.")
    if dicom_reader not in ("itk", "pydicom"):
        raise ValueError(f"dicom_reader must be 'itk' or 'pydicom', got {dicom_reader!r}.")
    dicom = "ITKReader" if dicom_reader == "itk" else "PydicomReader"
    if p.is_file():
        name = p.name.lower()
        if name.endswith(_NIFTI):
            reader = "NibabelReader"
        elif _is_dicom(p):
            reader = dicom
        elif name.endswith(".png"):
            return _load_png_folder(p.parent, [p], spacing)
        else:
            raise ValueError(f"{p}: not a NIfTI (.nii/.nii.gz), DICOM or PNG file.")
        try:
            img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(p)
        except Exception as e:  # readers raise many types on broken files
            raise ValueError(f"{p}: {reader} could not read the file ({e}).") from e
        return _finish(img, p)
    entries = [e for e in sorted(p.iterdir()) if e.is_file() and not e.name.startswith(".")]
    pngs = [e for e in entries if e.suffix.lower() == ".png"]
    if pngs:
        return _load_png_folder(p, pngs, spacing)
    if any(_is_dicom(e) for e in entries):
        try:
            img = LoadImage(reader=dicom, image_only=True, ensure_channel_first=True)(p)
        except Exception as e:
            raise ValueError(f"{p}: {dicom} could not read the DICOM series ({e}).") from e
        return _finish(img, p)
    raise ValueError(f"{p}: folder holds neither PNG slices nor DICOM files.")


class LoadVolumed(MapTransform):
    """Dictionary transform around :func:`load_volume`, for inference configs.

    Args:
        keys: keys holding paths.
        dicom_reader: ``"itk"`` or ``"pydicom"``.
        spacing: spacing for PNG folders (see :func:`load_volume`).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dicom_reader: str = "itk",
        spacing: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dicom_reader = dicom_reader
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key.

        Args:
            data: the sample with paths.

        Returns:
            a copy with the paths replaced by volumes.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_volume(d[key], self.dicom_reader, self.spacing)
        return d
