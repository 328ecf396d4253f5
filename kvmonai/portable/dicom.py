"""Find one DICOM image series in a folder and check that it is one regular volume before anything is computed.

MONAI's DICOM readers read a folder as a volume, but they do not say when the folder is ambiguous: ITK picks one of
several series without a word, and neither reader refuses a series with a missing slice, mixed image sizes or absent
geometry. Inference writes masks and DICOM Segmentations that a PACS stores next to the study, so an ambiguous or
irregular input must stop the run with a message that names the folder, the series and the files, before any output
exists. :func:`find_series` does these checks on the headers alone (pixel data is not read); the volume itself is
then read by MONAI (:mod:`~kvmonai.portable.volume`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KVMonaiError

__all__ = ["GEOMETRY_TAGS", "DicomInputError", "DicomSeries", "find_series", "is_dicom_file"]

#: the tags a slice needs for its position in the patient (checked on every file)
GEOMETRY_TAGS: tuple[str, ...] = ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
#: relative tolerance on slice spacing: a gap larger than this (a missing slice) is refused
_SPACING_RTOL = 0.05
#: tolerance on direction cosines and pixel spacing between slices of one series
_ATOL = 1e-4


class DicomInputError(KVMonaiError, ValueError):
    """A DICOM input that is not one regular image series; the message names the folder, series and files."""


@dataclass(frozen=True)
class DicomSeries:
    """One checked DICOM image series.

    Attributes:
        source: the file or folder given.
        uid: its SeriesInstanceUID.
        number: its SeriesNumber, if any.
        description: its SeriesDescription (may be empty).
        modality: its Modality.
        files: its files, sorted along the slice normal (inferior to superior for axial slices).
        headers: their pydicom headers (no pixel data), in :attr:`files` order, as read by :func:`find_series`.
        extra_files: DICOM files in the folder outside this series (other series, a DICOMDIR, reports).
    """

    source: Path
    uid: str
    number: int | None
    description: str
    modality: str
    files: tuple[Path, ...]
    headers: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    extra_files: int = 0

    def datasets(self, pixels: bool = False) -> list[Any]:
        """The series' datasets in :attr:`files` order: the headers already read, or the files again with pixels."""
        import pydicom

        if not pixels and len(self.headers) == len(self.files):
            return list(self.headers)
        return [pydicom.dcmread(f, stop_before_pixels=not pixels) for f in self.files]

    def affine(self) -> np.ndarray:
        """The ``4 x 4`` affine from voxel ``(row, column, slice)`` of the sorted files to RAS millimetres."""
        headers = self.datasets()
        first, last = headers[0], headers[-1]
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        p0 = np.asarray([float(v) for v in first.ImagePositionPatient])
        if len(self.files) > 1:
            step = (np.asarray([float(v) for v in last.ImagePositionPatient]) - p0) / (len(self.files) - 1)
        else:
            thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
            step = np.cross(iop[:3], iop[3:]) * thickness
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[3:] * row_spacing, iop[:3] * col_spacing, step, p0
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def label(self) -> str:
        """A one-line description for messages: number, description, modality, count and UID."""
        number = f"series {self.number}" if self.number is not None else "series (no number)"
        desc = f" '{self.description}'" if self.description else ""
        return f"{number}{desc}, {self.modality or '?'}, {len(self.files)} image(s), SeriesInstanceUID {self.uid}"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm`` name or the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_headers(source: Path) -> tuple[list[tuple[Path, Any]], int]:
    """The image headers at ``source`` and the number of DICOM files there (images or not, hidden ones too)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if source.is_file():
        every = candidates = [source]
    else:  # hidden DICOM files are not read, but counted: MONAI's readers would read them with the folder
        every = [e for e in sorted(source.iterdir()) if e.is_file() and is_dicom_file(e)]
        candidates = [e for e in every if not e.name.startswith(".")]
    headers = []
    for f in candidates:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            msg = f"{f}: not a readable DICOM file ({e}); remove it from {source} or re-export it."
            raise DicomInputError(msg) from e
        if len(ds) == 0:  # pydicom reads a truncated or foreign file after a DICM marker as an empty dataset
            raise DicomInputError(f"{f}: not a readable DICOM file (no data elements); remove it from {source}.")
        if "Rows" in ds or "PixelData" in ds or "ImagePositionPatient" in ds:  # images; skips DICOMDIR, SR, PR...
            headers.append((f, ds))
    if not headers:
        raise DicomInputError(f"{source}: no DICOM images found.")
    return headers, len(every)


def _series_of(headers: Sequence[tuple[Path, Any]]) -> dict[str, list[tuple[Path, Any]]]:
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        groups.setdefault(uid, []).append((f, ds))
    return groups


def _describe(source: Path, uid: str, items: Sequence[tuple[Path, Any]]) -> DicomSeries:
    ds = items[0][1]
    number = ds.get("SeriesNumber")
    return DicomSeries(
        source=source,
        uid=uid,
        number=int(number) if number not in (None, "") else None,
        description=str(ds.get("SeriesDescription", "")),
        modality=str(ds.get("Modality", "")),
        files=tuple(f for f, _ in items),
        headers=tuple(h for _, h in items),
    )


def _choose(source: Path, groups: dict[str, list[tuple[Path, Any]]], series: str | int | None) -> str:
    if series is None or str(series) == "":
        if len(groups) == 1:
            return next(iter(groups))
        lines = [f"  - {_describe(source, u, g).label()}" for u, g in groups.items()]
        raise DicomInputError(
            f"{source}: the folder holds {len(groups)} image series; choose one by its SeriesInstanceUID or "
            "SeriesNumber (bundle setting series, e.g. --series <UID>), or give each series its own folder:\n"
            + "\n".join(lines)
        )
    wanted = str(series).strip()
    if wanted in groups:
        return wanted
    by_number = [u for u, g in groups.items() if str(g[0][1].get("SeriesNumber", "")) == wanted]
    if len(by_number) == 1:
        return by_number[0]
    known = ", ".join(f"{_describe(source, u, g).label()}" for u, g in groups.items())
    why = "several series have that number" if by_number else "no such SeriesInstanceUID or SeriesNumber"
    raise DicomInputError(f"{source}: series {wanted!r}: {why}; the folder holds: {known}.")


def _check_geometry(source: Path, label: str, items: Sequence[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
    """Geometry tags present and equal across slices; returns the items sorted along the normal."""
    for f, ds in items:
        missing = [t for t in GEOMETRY_TAGS if t not in ds or ds.get(t) in (None, "")]
        if missing:
            raise DicomInputError(
                f"{f}: {label} of {source}: missing geometry tag(s) {', '.join(missing)}; without them the slices "
                "cannot be placed in the patient and no mask could be mapped back. Re-export the series from the "
                "scanner or PACS with its geometry."
            )
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DicomInputError(
                f"{f}: {label} of {source}: a multi-frame image ({frames} frames); only single-frame series (one "
                "file per slice) are supported; convert it, e.g. with dcmqi or dicom3tools."
            )
    f0, ds0 = items[0]
    iop0 = np.asarray([float(v) for v in ds0.ImageOrientationPatient])
    sp0 = np.asarray([float(v) for v in ds0.PixelSpacing])
    size0 = (int(ds0.Rows), int(ds0.Columns))
    for f, ds in items[1:]:
        size = (int(ds.Rows), int(ds.Columns))
        if size != size0:
            raise DicomInputError(
                f"{source}: {label}: mixed image sizes, {f.name} is {size[0]}x{size[1]} but {f0.name} is "
                f"{size0[0]}x{size0[1]} (rows x columns); one series must be one regular volume."
            )
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        sp = np.asarray([float(v) for v in ds.PixelSpacing])
        if not np.allclose(iop, iop0, atol=_ATOL) or not np.allclose(sp, sp0, atol=_ATOL):
            raise DicomInputError(
                f"{source}: {label}: {f.name} has orientation {iop.round(4).tolist()} and pixel spacing "
                f"{sp.tolist()}, {f0.name} has {iop0.round(4).tolist()} and {sp0.tolist()}; the slices are not one "
                "volume (a localiser or a reformat mixed in?)."
            )
    normal = np.cross(iop0[:3], iop0[3:])
    pos = np.asarray([np.dot(normal, [float(v) for v in ds.ImagePositionPatient]) for _, ds in items])
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    pos = pos[order]
    if len(items) > 1:
        steps = np.diff(pos)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            a, b = items[dup[0]][0].name, items[dup[0] + 1][0].name
            raise DicomInputError(
                f"{source}: {label}: {a} and {b} lie at the same position; two acquisitions or duplicates in one "
                "series. Keep one of them."
            )
        step = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - step) > _SPACING_RTOL * step)
        if bad.size:
            i = int(bad[0])
            raise DicomInputError(
                f"{source}: {label}: the slices are not evenly spaced: {items[i][0].name} -> {items[i + 1][0].name} "
                f"is {steps[i]:.3f} mm, the series' spacing is {step:.3f} mm (a missing slice?). Inference would "
                "place the following slices wrongly; re-export the complete series."
            )
    return items


def find_series(source: str | os.PathLike, series: str | int | None = None) -> DicomSeries:
    """The one DICOM image series at ``source``, checked to be a regular volume.

    Args:
        source: a DICOM file, or a folder of DICOM files (one file per slice; non-DICOM files are ignored).
        series: which series to use when the folder holds several: a SeriesInstanceUID, or a SeriesNumber.

    Returns:
        the series, its files sorted along the slice normal.

    Raises:
        DicomInputError: when ``source`` holds no DICOM images, several series and no choice, an unknown choice, a
            file that pydicom cannot read, a slice without geometry tags, a multi-frame image, slices of mixed size
            or orientation, two slices at one position, or uneven slice spacing (a missing slice).
    """
    source = Path(source)
    if not source.exists():
        raise DicomInputError(f"{source}: no such file or folder.")
    headers, dicom_files = _read_headers(source)
    groups = _series_of(headers)
    uid = _choose(source, groups, series)
    items = _check_geometry(source, _describe(source, uid, groups[uid]).label(), groups[uid])
    return replace(_describe(source, uid, items), extra_files=dicom_files - len(items))
