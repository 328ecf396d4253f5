"""Write a predicted mask as a DICOM Segmentation (SEG) that references its source MR series, with highdicom.

The SEG is what a PACS stores next to the study and what OHIF and 3D Slicer display on the source images:

- it shares the source series' Study, Patient and Frame of Reference, and every frame references the source image
  (SOP Instance UID) it lies on;
- each of the three organs is a segment with SNOMED CT codes: category *Anatomical Structure* (CID 7150) and type
  *Large intestine* (14742008), *Small intestine* (30315005) and *Stomach* (69695003), algorithm type AUTOMATIC, and
  the algorithm identification names the bundle and its version (family *Artificial Intelligence*);
- the segmentation type is **BINARY**: the organs may overlap (a loop of small bowel against the stomach, and the
  ground truth of the dataset overlaps), and BINARY stores one bit plane per segment, so every overlap survives.
  A LABELMAP stores one segment number per pixel and would have to drop one organ wherever two overlap. Empty
  frames are omitted.

The mask is mapped onto the source grid through the world coordinates of each source pixel (its Image Position,
Image Orientation and Pixel Spacing against the mask's affine), not by assuming an axis order, and the mapping
is refused unless every source pixel falls on a mask voxel centre. highdicom builds and validates the dataset;
this module only decides what goes in it. MONAI has no DICOM SEG writer (``SaveImage`` writes NIfTI, NRRD, PNG).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .dicom import DicomInputError, find_series
from .files import atomic_output
from .volume import DICOM_SERIES_KEY, DICOM_SOURCE_KEY

__all__ = [
    "SEGMENT_CODES",
    "SEGMENT_COLOURS",
    "SEG_MODES",
    "SaveDicomSegd",
    "mask_on_source_grid",
    "segment_descriptions",
    "write_dicom_seg",
]

#: label -> (segment label shown in viewers, SNOMED CT code value, code meaning) of the segmented property type
SEGMENT_CODES: dict[str, tuple[str, str, str]] = {
    "large_bowel": ("Large bowel", "14742008", "Large intestine"),
    "small_bowel": ("Small bowel", "30315005", "Small intestine"),
    "stomach": ("Stomach", "69695003", "Stomach"),
}
#: recommended display colours as RGB (MONAI Label's SEG writer, dcmqi, stores them as RecommendedDisplayCIELabValue):
#: saturated hues that stand apart from each other and from grey MR intensities in a viewer
SEGMENT_COLOURS: dict[str, tuple[int, int, int]] = {
    "large_bowel": (255, 170, 0),
    "small_bowel": (0, 200, 255),
    "stomach": (230, 60, 170),
}
#: ``SaveDicomSegd(mode=...)``: ``auto`` writes a SEG for DICOM inputs only, ``always`` refuses other inputs
SEG_MODES: tuple[str, ...] = ("auto", "always", "never")
#: LPS (DICOM patient coordinates) <-> RAS (MONAI/NIfTI affines)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: how far (in voxels) a source pixel centre may lie from a mask voxel centre
_GRID_TOL = 0.05


def mask_on_source_grid(mask: np.ndarray, affine: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """Resample ``mask`` onto the pixels of each source image, by world coordinates.

    Args:
        mask: ``(segments, I, J, K)`` boolean mask on the grid of ``affine``.
        affine: ``4 x 4`` voxel -> RAS millimetre affine of ``mask``.
        datasets: the source images (pydicom datasets with ``ImagePositionPatient``, ``ImageOrientationPatient``,
            ``PixelSpacing``, ``Rows``, ``Columns``).

    Returns:
        ``(len(datasets), Rows, Columns, segments)`` boolean frames, one per source image, in the given order.

    Raises:
        ValueError: when a source pixel does not fall on a mask voxel centre or lies outside the mask (the mask was
            not computed on this series' grid).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 4:
        raise ValueError(f"mask must be (segments, I, J, K), got shape {mask.shape}.")
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        origin = _LPS_TO_RAS @ np.asarray([float(v) for v in ds.ImagePositionPatient])
        along_row = _LPS_TO_RAS @ iop[:3] * col_spacing  # next column
        along_col = _LPS_TO_RAS @ iop[3:] * row_spacing  # next row
        base = to_voxel[:3, :3] @ origin + to_voxel[:3, 3]
        dc, dr = to_voxel[:3, :3] @ along_row, to_voxel[:3, :3] @ along_col
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        idx = base[:, None, None] + dr[:, None, None] * r + dc[:, None, None] * c  # (3, rows, cols)
        near = np.rint(idx)
        off = float(np.abs(idx - near).max())
        if off > _GRID_TOL:
            raise ValueError(
                f"{getattr(ds, 'filename', 'source image')}: its pixels lie {off:.2f} voxels off the mask's grid; "
                "the mask was not computed on this series (resample it onto the series first)."
            )
        near = near.astype(np.int64)
        shape = np.asarray(mask.shape[1:])[:, None, None]
        if (near < 0).any() or (near >= shape).any():
            raise ValueError(
                f"{getattr(ds, 'filename', 'source image')}: its pixels fall outside the mask "
                f"(shape {tuple(mask.shape[1:])}); the mask was not computed on this series."
            )
        frames.append(np.moveaxis(mask[:, near[0], near[1], near[2]], 0, -1))
    return np.stack(frames)


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as e:
        raise ImportError(
            "DICOM SEG output needs highdicom (and pydicom >= 3): pip install 'highdicom>=0.28' (kvmonai: the dicom "
            "extra), or set dicom_seg to 'never'."
        ) from e
    return highdicom


def _check_labels(labels: Sequence[str]) -> None:
    unknown = [name for name in labels if name not in SEGMENT_CODES]
    if unknown:
        raise ValueError(f"labels {unknown} have no SNOMED CT code; known labels: {sorted(SEGMENT_CODES)}.")


def segment_descriptions(labels: Sequence[str], algorithm_name: str, algorithm_version: str) -> list[Any]:
    """highdicom segment descriptions for ``labels`` (keys of :data:`SEGMENT_CODES`), numbered from 1.

    Raises:
        ValueError: for a label without a code.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    _check_labels(labels)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    out = []
    for number, name in enumerate(labels, start=1):
        label, value, meaning = SEGMENT_CODES[name]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.cid7150.AnatomicalStructure,
                segmented_property_type=hd.sr.CodedConcept(value, "SCT", meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{algorithm_name} {label}",
            )
        )
    return out


def write_dicom_seg(
    path: str | os.PathLike,
    mask: np.ndarray,
    affine: np.ndarray,
    source: str | os.PathLike,
    series: str | None,
    labels: Sequence[str],
    algorithm_name: str,
    algorithm_version: str,
    series_number: int = 300,
) -> Path:
    """Write ``mask`` as a BINARY DICOM SEG referencing the source series, atomically.

    Args:
        path: the ``.dcm`` file to write.
        mask: ``(segments, I, J, K)`` mask on the grid of ``affine`` (any orientation of the source grid).
        affine: ``4 x 4`` voxel -> RAS affine of ``mask``.
        source: the DICOM file or folder the mask was computed from.
        series: its SeriesInstanceUID (needed when the folder holds several series).
        labels: one label per segment, keys of :data:`SEGMENT_CODES`.
        algorithm_name: the algorithm identification's name (the bundle's name).
        algorithm_version: its version (the bundle's version).
        series_number: the SEG's SeriesNumber.

    Returns:
        ``path``.

    Raises:
        ValueError: when ``labels`` does not match the mask's segments or the mask is not on the source grid.
        DicomInputError: when ``source`` is not one regular DICOM series.
        ImportError: without highdicom.
    """
    hd = _highdicom()

    mask = np.asarray(mask).astype(bool)
    if mask.shape[0] != len(labels):
        raise ValueError(f"the mask has {mask.shape[0]} segments but {len(labels)} labels were given: {list(labels)}.")
    found = find_series(source, series)
    datasets = found.datasets(pixels=False)
    frames = mask_on_source_grid(mask, affine, datasets)
    ds0 = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, algorithm_name, algorithm_version),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="kvmonai",
        manufacturer_model_name=algorithm_name,
        software_versions=str(algorithm_version),
        device_serial_number="0",
        series_description=f"{algorithm_name} {algorithm_version} (research use only)"[:64],
        content_label="KVMONAI",
        content_description=f"Automatic segmentation of {ds0.get('SeriesDescription', 'the series')}"[:64],
    )
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


class SaveDicomSegd(MapTransform):
    """Post-processing transform: write each prediction as a DICOM SEG next to the NIfTI mask.

    The prediction must be on the loaded volume's grid (after ``Invertd``), with the metadata that
    :class:`~kvmonai.portable.volume.LoadNiftiOrDicomd` sets for DICOM inputs. The file is
    ``<output_dir>/<input name><output_postfix>.dcm``.

    Args:
        keys: the prediction key(s).
        output_dir: where to write.
        labels: one label per channel (keys of :data:`SEGMENT_CODES`).
        algorithm_name: the algorithm identification's name (the bundle's ``name``).
        algorithm_version: its version (the bundle's ``version``).
        mode: ``"auto"`` (a SEG for DICOM inputs; nothing for NIfTI), ``"always"`` (refuse inputs that are not
            DICOM) or ``"never"``.
        output_postfix: appended to the input's name.
        series_number: the SEG's SeriesNumber.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: for an unknown ``mode`` or a label without a code.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        labels: Sequence[str],
        algorithm_name: str,
        algorithm_version: str,
        mode: str = "auto",
        output_postfix: str = "_seg",
        series_number: int = 300,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in SEG_MODES:
            raise ValueError(f"dicom_seg must be one of {list(SEG_MODES)}, got {mode!r}.")
        _check_labels(labels)
        self.output_dir = Path(output_dir)
        self.labels = list(labels)
        self.algorithm_name, self.algorithm_version = str(algorithm_name), str(algorithm_version)
        self.mode, self.output_postfix, self.series_number = mode, output_postfix, int(series_number)

    def output_path(self, source: str | os.PathLike) -> Path:
        """The SEG file written for the input ``source``."""
        name = Path(source).name
        for suffix in (".nii.gz", ".nii", ".dcm"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        return self.output_dir / f"{name}{self.output_postfix}.dcm"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mode == "never":
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {})
            source = meta.get(DICOM_SOURCE_KEY)
            if source is None:
                if self.mode == "always":
                    raise DicomInputError(
                        f"{meta.get('filename_or_obj', 'input')}: dicom_seg 'always' needs a DICOM input (a SEG "
                        "references its source images); give a DICOM series, or set dicom_seg to 'auto'."
                    )
                continue
            mask = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            affine = np.asarray(pred.affine if hasattr(pred, "affine") else meta["affine"], dtype=np.float64)
            write_dicom_seg(
                self.output_path(source),
                mask > 0.5,
                affine,
                source,
                meta.get(DICOM_SERIES_KEY),
                self.labels,
                self.algorithm_name,
                self.algorithm_version,
                self.series_number,
            )
        return d
