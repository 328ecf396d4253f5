"""Data layer for the UW-Madison GI Tract MRI dataset: the Kaggle layout, a synthetic stand-in, NIfTI preparation,
MONAI datalists and 2.5D transforms, and inference inputs (NIfTI, DICOM, PNG).

Submodules: :mod:`~kvmonai.data.rle` (run-length codec), :mod:`~kvmonai.data.kaggle` (csv + PNG tree reader),
:mod:`~kvmonai.data.synth` (synthetic dataset), :mod:`~kvmonai.data.prepare` (NIfTI volumes + datalist),
:mod:`~kvmonai.data.datalist` (folds, per-slice expansion), :mod:`~kvmonai.data.transforms` (MONAI transforms) and
:mod:`~kvmonai.data.io` (inference inputs). See ``docs/data.md``.

The names below are imported on first use, so that importing :mod:`kvmonai.data` (and running ``kvmonai synth``
or ``kvmonai prepare --help``) does not load torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmonai.data.datalist import assign_folds, expand_slices, load_datalist, split_fold
    from kvmonai.data.io import CANONICAL_AXCODES, LoadVolumed, load_volume
    from kvmonai.data.kaggle import (
        CLASSES,
        CSV_HEADER,
        SLICE_THICKNESS_MM,
        KaggleDataset,
        KaggleFormatError,
        LabelRow,
        Scan,
        SliceFile,
        SliceName,
        TrainLabels,
        find_scans,
        format_slice_filename,
        parse_slice_filename,
        parse_slice_id,
        read_slice_png,
        read_train_csv,
        scan_id,
        slice_id,
    )
    from kvmonai.data.prepare import (
        FORMAT_VERSION,
        IMAGE_DIR,
        LABEL_DIR,
        ORIENTATION,
        PrepareSummary,
        kaggle_affine,
        prepare_dataset,
        read_fingerprint,
        write_nifti,
    )
    from kvmonai.data.rle import RLEError, parse_rle, rle_decode, rle_encode, rle_end
    from kvmonai.data.synth import (
        DAYS_PER_CASE,
        GEOMETRIES,
        Geometry,
        ScanSpec,
        SynthSummary,
        generate_scan,
        iter_scan_slices,
        plan_dataset,
        write_synthetic_dataset,
    )
    from kvmonai.data.transforms import (
        DEFAULT_OFFSETS,
        ExtractSlice,
        ExtractSliced,
        NeighbourChannels,
        NeighbourChannelsd,
        RandSliceSamplerd,
        ScaleIntensityRobust,
        ScaleIntensityRobustd,
        neighbour_indices,
    )

_SUBMODULE: dict[str, str] = {
    "RLEError": "rle",
    "parse_rle": "rle",
    "rle_decode": "rle",
    "rle_encode": "rle",
    "rle_end": "rle",
    "CLASSES": "kaggle",
    "CSV_HEADER": "kaggle",
    "SLICE_THICKNESS_MM": "kaggle",
    "KaggleDataset": "kaggle",
    "KaggleFormatError": "kaggle",
    "LabelRow": "kaggle",
    "Scan": "kaggle",
    "SliceFile": "kaggle",
    "SliceName": "kaggle",
    "TrainLabels": "kaggle",
    "find_scans": "kaggle",
    "format_slice_filename": "kaggle",
    "parse_slice_filename": "kaggle",
    "parse_slice_id": "kaggle",
    "read_slice_png": "kaggle",
    "read_train_csv": "kaggle",
    "scan_id": "kaggle",
    "slice_id": "kaggle",
    "DAYS_PER_CASE": "synth",
    "GEOMETRIES": "synth",
    "Geometry": "synth",
    "ScanSpec": "synth",
    "SynthSummary": "synth",
    "generate_scan": "synth",
    "iter_scan_slices": "synth",
    "plan_dataset": "synth",
    "write_synthetic_dataset": "synth",
    "FORMAT_VERSION": "prepare",
    "IMAGE_DIR": "prepare",
    "LABEL_DIR": "prepare",
    "ORIENTATION": "prepare",
    "PrepareSummary": "prepare",
    "kaggle_affine": "prepare",
    "prepare_dataset": "prepare",
    "read_fingerprint": "prepare",
    "write_nifti": "prepare",
    "assign_folds": "datalist",
    "expand_slices": "datalist",
    "load_datalist": "datalist",
    "split_fold": "datalist",
    "DEFAULT_OFFSETS": "transforms",
    "ExtractSlice": "transforms",
    "ExtractSliced": "transforms",
    "NeighbourChannels": "transforms",
    "NeighbourChannelsd": "transforms",
    "RandSliceSamplerd": "transforms",
    "ScaleIntensityRobust": "transforms",
    "ScaleIntensityRobustd": "transforms",
    "neighbour_indices": "transforms",
    "CANONICAL_AXCODES": "io",
    "LoadVolumed": "io",
    "load_volume": "io",
}

__all__ = [
    "CANONICAL_AXCODES",
    "CLASSES",
    "CSV_HEADER",
    "DAYS_PER_CASE",
    "DEFAULT_OFFSETS",
    "FORMAT_VERSION",
    "GEOMETRIES",
    "IMAGE_DIR",
    "LABEL_DIR",
    "ORIENTATION",
    "SLICE_THICKNESS_MM",
    "ExtractSlice",
    "ExtractSliced",
    "Geometry",
    "KaggleDataset",
    "KaggleFormatError",
    "LabelRow",
    "LoadVolumed",
    "NeighbourChannels",
    "NeighbourChannelsd",
    "PrepareSummary",
    "RLEError",
    "RandSliceSamplerd",
    "ScaleIntensityRobust",
    "ScaleIntensityRobustd",
    "Scan",
    "ScanSpec",
    "SliceFile",
    "SliceName",
    "SynthSummary",
    "TrainLabels",
    "assign_folds",
    "expand_slices",
    "find_scans",
    "format_slice_filename",
    "generate_scan",
    "iter_scan_slices",
    "kaggle_affine",
    "load_datalist",
    "load_volume",
    "neighbour_indices",
    "parse_rle",
    "parse_slice_filename",
    "parse_slice_id",
    "plan_dataset",
    "prepare_dataset",
    "read_fingerprint",
    "read_slice_png",
    "read_train_csv",
    "rle_decode",
    "rle_encode",
    "rle_end",
    "scan_id",
    "slice_id",
    "split_fold",
    "write_nifti",
    "write_synthetic_dataset",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access (PEP 562)."""
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
