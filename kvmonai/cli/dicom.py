"""``kvmonai dicom VOLUME OUT``: write a NIfTI volume as a DICOM MR series with its geometry (to try DICOM inputs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai dicom``."""
    parser.add_argument("volume", type=Path, help="a NIfTI volume (e.g. data/prepared/synthetic/imagesTr/X.nii.gz)")
    parser.add_argument("out", type=Path, help="the series folder to write (new, or without DICOM files)")
    parser.add_argument("--tilt", type=float, default=0.0, help="tilt the stack by this many degrees (oblique)")
    parser.add_argument("--series-number", type=int, default=1, help="SeriesNumber (1)")
    parser.add_argument("--description", default="synthetic abdominal MR", help="SeriesDescription")
    parser.add_argument("--patient-id", default="KVMONAI-SYNTH", help="PatientID")


def run(args: argparse.Namespace) -> int:
    """Write the series.

    Returns:
        0 on success, 2 for invalid input (nothing written).
    """
    import nibabel as nib
    import numpy as np

    from kvmonai.data import rotation, write_dicom_series

    try:
        img = nib.load(args.volume)
        data = np.asarray(img.dataobj)
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        tilt = rotation(args.tilt, (1.0, 1.0, 0.0)) if args.tilt else None
        info = write_dicom_series(
            data, img.affine, args.out, tilt=tilt, patient_id=args.patient_id,
            series_description=args.description, series_number=args.series_number,
        )  # fmt: skip
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        print(f"kvmonai dicom: error: {args.volume}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(info.files)} MR slices to {info.folder} (SeriesInstanceUID {info.series_uid})")
    return 0
