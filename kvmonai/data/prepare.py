"""Turn a Kaggle-layout UW-Madison GI Tract folder into NIfTI volumes and a MONAI datalist with case-grouped folds.

Output (see ``docs/data.md``)::

    OUT/
      imagesTr/caseC_dayD.nii.gz    uint16 (H, W, D), the PNG slices stacked unchanged
      labelsTr/caseC_dayD.nii.gz    uint8  (H, W, D, 3), channel k = CLASSES[k] (0/1), overlaps kept
      datalist.json                 MONAI datalist, one entry per case-day, 5 folds grouped by case

Volume ``[..., z]`` is the PNG of slice ``z + 1`` exactly as stored (``(H, W)`` = rows, columns). The affine
(:func:`kaggle_affine`) maps rows to posterior, columns to patient-left and slices to superior (orientation code
``PLS``), with spacing (pixel height, pixel width, 3 mm).

The run is safe to repeat and to interrupt: the whole source is validated before anything is written; every file
is written to a hidden temporary file in the same folder and renamed into place (:func:`kvmonai.utils.atomic_output`);
a volume whose header records the fingerprint of its current source (names, sizes and modification times of its
PNGs, or its RLE rows) and whose whole compressed stream reads back is not rewritten; leftover temporary files of a
killed run are removed; the source folder is only read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvmonai.data.datalist import assign_folds
from kvmonai.data.kaggle import CLASSES, KaggleDataset, Scan
from kvmonai.portable.files import TEMP_GLOB
from kvmonai.utils import atomic_output, write_text_atomic

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_DIR",
    "LABEL_DIR",
    "ORIENTATION",
    "PrepareSummary",
    "kaggle_affine",
    "prepare_dataset",
    "read_fingerprint",
    "write_nifti",
]

logger = logging.getLogger(__name__)

#: bump when the volume layout changes, so older outputs are rewritten
FORMAT_VERSION = "kvmonai-prepare-1"
#: output sub-folders
IMAGE_DIR, LABEL_DIR = "imagesTr", "labelsTr"
#: orientation code of the written volumes (nibabel ``aff2axcodes``)
ORIENTATION = ("P", "L", "S")
#: temporary files a killed run may leave: atomic_output's, and the ``.NAME.part`` files of older kvmonai versions
_PARTIAL_GLOBS = (TEMP_GLOB, ".*.part")


def kaggle_affine(spacing: Sequence[float]) -> np.ndarray:
    """The affine of a prepared volume: array axes (row, column, slice) -> RAS world (orientation ``PLS``).

    Rows run anterior to posterior, columns patient-right to patient-left (the radiological display of an axial
    slice), slices inferior to superior. The dataset does not document the true patient orientation; this choice
    keeps ``volume[..., z]`` identical to the PNG and gives every volume the same orientation.

    Args:
        spacing: ``(pixel height, pixel width, slice spacing)`` in mm.

    Returns:
        a 4 x 4 float64 affine with the origin at 0.
    """
    sy, sx, sz = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[1, 0] = -sy  # rows -> -y (posterior)
    affine[0, 1] = -sx  # columns -> -x (patient left)
    affine[2, 2] = sz  # slices -> +z (superior)
    affine[3, 3] = 1.0
    return affine


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    description: str = "",
    fingerprint: str = "",
    compresslevel: int = 1,
) -> None:
    """Write a gzipped NIfTI-1 file atomically and reproducibly.

    The data go to a temporary file in the destination folder (:func:`kvmonai.utils.atomic_output`), which is
    renamed to ``NAME`` only when complete; on any error (including ``KeyboardInterrupt``) it is removed. The gzip
    header carries no time stamp, so equal inputs give byte-identical files.

    Args:
        path: destination, ending in ``.nii.gz``.
        data: the array (its dtype is kept).
        affine: the 4 x 4 voxel-to-world matrix (stored as qform and sform, code 1).
        description: up to 80 characters for the header's ``descrip``.
        fingerprint: up to 24 characters for the header's ``aux_file`` (see :func:`read_fingerprint`).
        compresslevel: gzip level 1-9.

    Raises:
        ValueError: when ``path`` does not end in ``.nii.gz`` or a text field is too long.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith(".nii.gz"):
        raise ValueError(f"{path}: the file name must end in .nii.gz.")
    if len(description) > 80 or len(fingerprint) > 24:
        raise ValueError("description must be <= 80 and fingerprint <= 24 characters (NIfTI-1 header limits).")
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode()
    img.header["aux_file"] = fingerprint.encode()
    with (
        atomic_output(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz,
    ):
        img.to_file_map(img.make_file_map({"image": gz}))


def read_fingerprint(path: str | os.PathLike) -> str | None:
    """Read the fingerprint stored by :func:`write_nifti` (header only, no pixel data).

    Args:
        path: a ``.nii.gz`` file.

    Returns:
        the fingerprint, or ``None`` when the file is missing or unreadable.
    """
    import nibabel as nib

    try:
        header = nib.load(os.fspath(path)).header
        return bytes(header["aux_file"].item()).decode(errors="replace").rstrip("\x00")
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError):
        return None


def _up_to_date(path: Path, fingerprint: str) -> bool:
    """Whether ``path`` carries ``fingerprint`` and its whole gzip stream reads back (CRC checked).

    The header alone would call a truncated or corrupted volume up to date, and training would later fail on it with
    a bare ``EOFError``; reading the stream costs a fraction of a second per volume.
    """
    import zlib

    if read_fingerprint(path) != fingerprint:
        return False
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error):
        return False
    return True


def _fingerprint(kind: str, scan: Scan, dataset: KaggleDataset) -> str:
    h = hashlib.sha256(f"{FORMAT_VERSION}|{kind}|{scan.id}".encode())
    if kind == "image":
        for s in scan.slices:  # size and modification time: a PNG edited in place changes its mtime
            st = s.path.stat()
            h.update(f"|{s.path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        assert dataset.labels is not None
        for key in scan.slice_ids():
            for row in dataset.labels.rows[key]:
                h.update(f"|{row.rle}".encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare_dataset` did.

    Attributes:
        datalist: path of the datalist JSON.
        scans: number of case-day volumes in the datalist.
        written: volumes (image or label) written in this run.
        skipped: volumes already up to date and left alone.
        slices: total number of slices.
        nonempty_slices: slices holding at least one organ.
    """

    datalist: str
    scans: int
    written: int
    skipped: int
    slices: int
    nonempty_slices: int


def _datalist_json(datalist: dict[str, Any]) -> str:
    """JSON with one line per datalist entry (readable, diff-friendly)."""
    lines = ["{"]
    for i, (key, value) in enumerate(datalist.items()):
        comma = "," if i < len(datalist) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join("  " + json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ]{comma}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join([*lines, "}"]) + "\n"


def _check_paths(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise ValueError(
            f"--out {out} is inside --src {src}; prepare never writes into the source, pick another folder."
        )


def _remove_partials(*folders: Path) -> None:
    for folder in folders:
        for pattern in _PARTIAL_GLOBS:
            for p in folder.glob(pattern):
                logger.info("removing leftover partial file %s", p)
                p.unlink(missing_ok=True)


def _write_scan(
    dataset: KaggleDataset, scan: Scan, img_dir: Path, lab_dir: Path, compresslevel: int
) -> tuple[dict[str, Any], int]:
    """Write the image and label volumes of ``scan`` unless they are up to date; its datalist entry and how many
    of the two files were written."""
    affine = kaggle_affine(scan.spacing)
    img_path, lab_path = img_dir / f"{scan.id}.nii.gz", lab_dir / f"{scan.id}.nii.gz"
    written = 0
    fp = _fingerprint("image", scan, dataset)
    if not _up_to_date(img_path, fp):
        image = dataset.load_image(scan)
        write_nifti(img_path, image, affine, f"{FORMAT_VERSION} {scan.id} image uint16 HxWxD", fp, compresslevel)
        del image
        written += 1
    fp = _fingerprint("label", scan, dataset)
    if not _up_to_date(lab_path, fp):
        label = dataset.load_label(scan)
        write_nifti(lab_path, label, affine, "ch0 large_bowel ch1 small_bowel ch2 stomach (0/1)", fp, compresslevel)
        del label
        written += 1
    presence = dataset.slice_presence(scan)  # (D, 3), from the csv alone
    entry = {
        "image": f"{IMAGE_DIR}/{img_path.name}",
        "label": f"{LABEL_DIR}/{lab_path.name}",
        "id": scan.id,
        "case": scan.case,
        "day": scan.day,
        "num_slices": scan.depth,
        "shape": list(scan.shape),
        "spacing": list(scan.spacing),
        "nonempty_slices": np.flatnonzero(presence.any(axis=1)).tolist(),
        "class_slices": presence.sum(axis=0).tolist(),
    }
    return entry, written


def _assign_folds(entries: list[dict[str, Any]], num_folds: int, seed: int) -> list[dict[str, Any]]:
    """Set every entry's ``fold`` (folds grouped by case, balanced in empty and non-empty slices); the folds' stats."""
    groups: dict[int, list[int]] = {}
    for e in entries:
        n_ne = len(e["nonempty_slices"])
        g = groups.setdefault(e["case"], [0, 0])
        g[0] += e["num_slices"] - n_ne
        g[1] += n_ne
    folds = assign_folds(groups, num_folds=num_folds, seed=seed)
    if len(groups) < num_folds:
        logger.warning("only %d cases for %d folds: some folds are empty", len(groups), num_folds)
    for e in entries:
        e["fold"] = folds[e["case"]]
    fold_stats = []
    for f in range(num_folds):
        members = [e for e in entries if e["fold"] == f]
        n = sum(e["num_slices"] for e in members)
        ne = sum(len(e["nonempty_slices"]) for e in members)
        fold_stats.append(
            {
                "fold": f,
                "cases": len({e["case"] for e in members}),
                "scans": len(members),
                "slices": n,
                "nonempty_fraction": round(ne / n, 4) if n else None,
            }
        )
    return fold_stats


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    num_folds: int = 5,
    seed: int = 0,
    compresslevel: int = 1,
    csv_path: str | os.PathLike | None = None,
    datalist_name: str = "datalist.json",
    progress: bool = True,
) -> PrepareSummary:
    """Convert a Kaggle-layout folder into per-case-day NIfTI volumes and a MONAI datalist.

    Args:
        src: the folder holding ``train.csv`` and ``train/`` (real or synthetic); only read.
        out: output folder (created); must not be inside ``src``.
        num_folds: number of cross-validation folds (grouped by case, stratified by empty vs non-empty slices).
        seed: seed of the fold assignment's tie-breaking.
        compresslevel: gzip level of the volumes (1 is fast, 9 small).
        csv_path: label file (default ``SRC/train.csv``).
        datalist_name: file name of the datalist in ``out``.
        progress: show a tqdm progress bar.

    Returns:
        a summary of the run.

    Raises:
        KaggleFormatError: when the source is malformed (nothing is written then).
        ValueError: when ``out`` is inside ``src`` or an argument is out of range.
    """
    src, out = Path(src), Path(out)
    if not 1 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be 1..9, got {compresslevel}.")
    _check_paths(src, out)
    dataset = KaggleDataset(src, csv_path=csv_path)  # validates everything before anything is written
    assert dataset.labels is not None
    img_dir, lab_dir = out / IMAGE_DIR, out / LABEL_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    _remove_partials(out, img_dir, lab_dir)

    from tqdm.auto import tqdm

    entries: list[dict[str, Any]] = []
    written = skipped = 0
    bar = tqdm(dataset.scans, unit="scan", desc="prepare", disable=not progress)
    for scan in bar:
        bar.set_postfix_str(scan.id, refresh=False)
        entry, n_written = _write_scan(dataset, scan, img_dir, lab_dir, compresslevel)
        entries.append(entry)
        written, skipped = written + n_written, skipped + 2 - n_written
    bar.close()
    fold_stats = _assign_folds(entries, num_folds, seed)
    datalist = {
        "name": "UW-Madison GI Tract Image Segmentation (kvmonai prepare)",
        "format": FORMAT_VERSION,
        "source": str(src.resolve()),
        "labels": {str(k): c for k, c in enumerate(CLASSES)},
        "image_layout": "uint16 (H, W, D); volume[..., z] is PNG slice z+1 unchanged",
        "label_layout": "uint8 (H, W, D, 3); channel k is labels[k], 0/1, classes may overlap",
        "orientation": "".join(ORIENTATION),
        "num_folds": num_folds,
        "fold_stats": fold_stats,
        "numTraining": len(entries),
        "training": entries,
    }
    dl_path = out / datalist_name
    write_text_atomic(dl_path, _datalist_json(datalist))
    n_slices = sum(e["num_slices"] for e in entries)
    n_ne = sum(len(e["nonempty_slices"]) for e in entries)
    logger.info("%d volumes written, %d up to date; datalist %s", written, skipped, dl_path)
    return PrepareSummary(str(dl_path), len(entries), written, skipped, n_slices, n_ne)
