"""Write a volume as a DICOM MR image series with real geometry: the test, demo and PACS input of the DICOM path.

The Kaggle data are PNG slices, and nothing may be downloaded, so the DICOM inputs that clinical sites send are made
here from a NIfTI volume (a prepared synthetic or real scan): one MR Image Storage file per slice, with Patient,
Study, Series, Frame of Reference, Image Plane and MR Image attributes, 16-bit unsigned pixels and positions taken
from the volume's affine. An optional rotation makes the series oblique, as scanners write tilted stacks. pydicom
writes the files; highdicom and MONAI's readers read them like a scanner's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DicomSeriesInfo", "rotation", "write_dicom_series"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What :func:`write_dicom_series` wrote.

    Attributes:
        folder: the series folder.
        files: one file per slice, in slice order.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID.
        sop_uids: SOPInstanceUID per file.
    """

    folder: Path
    files: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_uids: tuple[str, ...]


def rotation(degrees: float, axis: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """The ``3 x 3`` rotation by ``degrees`` about ``axis`` (Rodrigues), to tilt a series."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike,
    tilt: np.ndarray | None = None,
    patient_id: str = "KVMONAI-SYNTH",
    patient_name: str = "Synthetic^Phantom",
    series_description: str = "synthetic abdominal MR",
    series_number: int = 1,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_seed: str | None = None,
) -> DicomSeriesInfo:
    """Write ``volume`` as one DICOM MR series, a file per slice along its last axis.

    Array axis 0 becomes the DICOM rows, axis 1 the columns, axis 2 the slices; the geometry (Image Position,
    Image Orientation, Pixel Spacing, Slice Thickness) is read from ``affine``. The volume is written unchanged,
    rounded to ``uint16`` after clipping at 0.

    Args:
        volume: ``(rows, columns, slices)`` intensities.
        affine: ``4 x 4`` voxel -> RAS affine of ``volume`` (axes 0 and 1 must be orthogonal).
        folder: the output folder (created; must not hold DICOM files already).
        tilt: a ``3 x 3`` rotation applied to the geometry about the volume's first voxel (an oblique series).
        patient_id: PatientID.
        patient_name: PatientName.
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        study_uid: StudyInstanceUID (new if ``None``); give one to add a series to a study.
        frame_of_reference_uid: FrameOfReferenceUID (new if ``None``).
        uid_seed: derive every UID not given from this text (e.g. the volume's content hash), so that writing the
            same volume again gives the same UIDs and a PACS keeps one copy; ``None``: random UIDs.

    Returns:
        the files and UIDs written.

    Raises:
        ValueError: for a volume that is not 3D, an affine whose first two axes are not orthogonal, or a folder
            that already holds DICOM files.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (rows, columns, slices), got shape {vol.shape}.")
    a = np.asarray(affine, dtype=np.float64).copy()
    if tilt is not None:
        r = np.asarray(tilt, dtype=np.float64)
        a[:3, :3] = r @ a[:3, :3]
        a[:3, 3] = r @ a[:3, 3]
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    cos_col, cos_row = a[:3, 0] / spacing[0], a[:3, 1] / spacing[1]  # directions of increasing row, column index
    if abs(float(cos_col @ cos_row)) > 1e-6:
        raise ValueError("affine: the row and column axes are not orthogonal; DICOM images need a rectangular grid.")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if any(p.suffix == ".dcm" for p in out.iterdir()):
        raise ValueError(f"{out}: already holds DICOM files; write each series into an empty folder.")

    def new_uid(role: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, role]) if uid_seed is not None else generate_uid()

    study_uid = study_uid or new_uid("study")
    series_uid, frame_uid = new_uid(f"series {study_uid}"), frame_of_reference_uid or new_uid("frame of reference")
    pixels = np.clip(np.rint(vol), 0, 65535).astype(np.uint16)
    low, high = (float(v) for v in np.percentile(pixels, (1, 99)))
    window = (round((low + high) / 2, 1), round(max(high - low, 1.0), 1))
    normal = np.cross(_RAS_TO_LPS @ cos_row, _RAS_TO_LPS @ cos_col)
    files, sops = [], []
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop = new_uid(f"instance {series_uid} {k}")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "", "", "kvmonai synthetic study"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, int(series_number)
        ds.SeriesDescription = series_description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "kvmonai synthetic"
        ds.InstanceNumber, ds.ImageType = k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500.0, 15.0, 1, 1.5
        ds.ImagePositionPatient = [float(v) for v in _RAS_TO_LPS @ (a[:3, 3] + a[:3, 2] * k)]
        ds.ImageOrientationPatient = [float(v) for v in (*(_RAS_TO_LPS @ cos_row), *(_RAS_TO_LPS @ cos_col))]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]  # between rows, between columns
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.SliceLocation = float(normal @ np.asarray(ds.ImagePositionPatient))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[0]), int(vol.shape[1])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = window  # the display window of the whole series, as scanners write
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k]).tobytes()
        path = out / f"IM{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        sops.append(sop)
    return DicomSeriesInfo(out, tuple(files), study_uid, series_uid, frame_uid, tuple(sops))
