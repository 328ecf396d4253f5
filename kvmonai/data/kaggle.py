"""Reader for the UW-Madison GI Tract Image Segmentation (Kaggle) layout.

The layout, read exactly::

    ROOT/
      train.csv                                   id,class,segmentation (three rows per slice)
      train/caseC/caseC_dayD/scans/slice_SSSS_W_H_PW_PH.png

* ``id`` is ``caseC_dayD_slice_SSSS`` with the same 1-based, 4-digit ``SSSS`` as the file name;
* ``class`` is one of :data:`CLASSES`; an empty ``segmentation`` means the organ is absent in that slice;
* the file name tokens are **width, height**, pixel width, pixel height: ``slice_0001_360_310_1.50_1.50.png``
  holds a ``(310, 360)`` array;
* pixels are 16-bit single-channel PNG and are returned as ``uint16``;
* slices are 3 mm apart (:data:`SLICE_THICKNESS_MM`).

Every inconsistency raises :class:`KaggleFormatError` (a :class:`ValueError`) naming the file or the csv line and
what to do. See ``docs/data.md``.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvmonai.data.rle import RLEError, parse_rle, rle_decode, rle_end
from kvmonai.utils import KVMonaiError, short_list

__all__ = [
    "CLASSES",
    "CSV_HEADER",
    "SLICE_THICKNESS_MM",
    "KaggleDataset",
    "KaggleFormatError",
    "LabelRow",
    "Scan",
    "SliceFile",
    "SliceName",
    "TrainLabels",
    "find_scans",
    "format_slice_filename",
    "parse_slice_filename",
    "parse_slice_id",
    "read_slice_png",
    "read_train_csv",
    "scan_id",
    "slice_id",
]

#: organ classes in the order of the three csv rows of every slice (and of the label channels)
CLASSES: tuple[str, str, str] = ("large_bowel", "small_bowel", "stomach")
#: the header of ``train.csv``
CSV_HEADER: tuple[str, str, str] = ("id", "class", "segmentation")
#: distance between slices in mm (the Kaggle description: "pixel thickness in superior-inferior direction is 3mm")
SLICE_THICKNESS_MM: float = 3.0

_SLICE_NAME = re.compile(r"slice_(\d{4,})_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.png")
_SLICE_ID = re.compile(r"case(\d+)_day(\d+)_slice_(\d{4,})")
_CASE_DIR = re.compile(r"case(\d+)")
_DAY_DIR = re.compile(r"case(\d+)_day(\d+)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_LISTED = 5


class KaggleFormatError(KVMonaiError, ValueError):
    """The input does not follow the UW-Madison GI Tract Kaggle layout."""


def scan_id(case: int, day: int) -> str:
    """Return the case-day id ``caseC_dayD``.

    Args:
        case: case (patient) number.
        day: day number.

    Returns:
        the id string.
    """
    return f"case{case}_day{day}"


def slice_id(case: int, day: int, index: int) -> str:
    """Return the csv id ``caseC_dayD_slice_SSSS`` of a slice.

    Args:
        case: case (patient) number.
        day: day number.
        index: 1-based slice number.

    Returns:
        the id string.
    """
    return f"case{case}_day{day}_slice_{index:04d}"


def parse_slice_id(value: str, source: str | None = None) -> tuple[int, int, int]:
    """Split a csv id ``caseC_dayD_slice_SSSS`` into its numbers.

    Args:
        value: the id.
        source: where the id came from (e.g. ``"train.csv line 5"``), used in the error message.

    Returns:
        ``(case, day, slice)`` with a 1-based slice number.

    Raises:
        KaggleFormatError: when the id does not have that form.
    """
    m = _SLICE_ID.fullmatch(value)
    if m is None:
        where = f"{source}: " if source else ""
        raise KaggleFormatError(
            f"{where}id {value!r} is not of the form 'caseC_dayD_slice_SSSS' (e.g. 'case123_day20_slice_0001')."
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class SliceName:
    """The tokens of a slice file name ``slice_SSSS_W_H_PW_PH.png``.

    Attributes:
        index: 1-based slice number ``SSSS``.
        width: image width W in pixels (number of columns).
        height: image height H in pixels (number of rows).
        pixel_width: pixel spacing along the width (between columns) in mm.
        pixel_height: pixel spacing along the height (between rows) in mm.
    """

    index: int
    width: int
    height: int
    pixel_width: float
    pixel_height: float

    @property
    def shape(self) -> tuple[int, int]:
        """The numpy shape ``(H, W)`` of the image."""
        return self.height, self.width


def parse_slice_filename(name: str | os.PathLike) -> SliceName:
    """Parse a slice file name ``slice_SSSS_W_H_PW_PH.png``.

    Args:
        name: the file name or a path ending in it.

    Returns:
        the parsed tokens; note that width comes **before** height.

    Raises:
        KaggleFormatError: when the name does not have that form or has a zero size or spacing.
    """
    base = os.path.basename(os.fspath(name))
    m = _SLICE_NAME.fullmatch(base)
    if m is None:
        raise KaggleFormatError(
            f"{os.fspath(name)}: file name is not 'slice_SSSS_W_H_PW_PH.png' "
            "(e.g. 'slice_0001_360_310_1.50_1.50.png': slice number, width, height, pixel width, pixel height)."
        )
    info = SliceName(int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4)), float(m.group(5)))
    if info.index < 1 or info.width < 1 or info.height < 1 or info.pixel_width <= 0 or info.pixel_height <= 0:
        raise KaggleFormatError(
            f"{os.fspath(name)}: slice number, width, height and spacings in the file name must be positive."
        )
    return info


def format_slice_filename(index: int, width: int, height: int, pixel_width: float, pixel_height: float) -> str:
    """Build a slice file name in the Kaggle convention (inverse of :func:`parse_slice_filename`).

    Args:
        index: 1-based slice number.
        width: image width W (columns).
        height: image height H (rows).
        pixel_width: spacing between columns in mm.
        pixel_height: spacing between rows in mm.

    Returns:
        e.g. ``"slice_0001_360_310_1.50_1.50.png"``.
    """
    return f"slice_{index:04d}_{width}_{height}_{pixel_width:.2f}_{pixel_height:.2f}.png"


@dataclass(frozen=True)
class SliceFile:
    """One PNG slice of a scan.

    Attributes:
        path: the file.
        name: its parsed file name.
    """

    path: Path
    name: SliceName


@dataclass(frozen=True)
class Scan:
    """One case-day scan: a folder ``caseC/caseC_dayD/scans`` of consecutive slices of one size.

    Attributes:
        case: case (patient) number.
        day: day number.
        directory: the ``scans`` folder.
        slices: the slices sorted by slice number ``1..depth``.
    """

    case: int
    day: int
    directory: Path
    slices: tuple[SliceFile, ...] = field(repr=False)

    @property
    def id(self) -> str:
        """``caseC_dayD``."""
        return scan_id(self.case, self.day)

    @property
    def depth(self) -> int:
        """Number of slices."""
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape ``(H, W, D)``."""
        first = self.slices[0].name
        return first.height, first.width, self.depth

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along ``(H, W, D)``: (pixel height, pixel width, 3.0)."""
        first = self.slices[0].name
        return first.pixel_height, first.pixel_width, SLICE_THICKNESS_MM

    def slice_ids(self) -> list[str]:
        """The csv ids of the slices, in slice order."""
        return [slice_id(self.case, self.day, s.name.index) for s in self.slices]


def _listdir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _scan_from_folder(case: int, day: int, scans_dir: Path) -> Scan:
    files: dict[int, SliceFile] = {}
    for entry in _listdir(scans_dir):
        if not entry.name.lower().endswith(".png"):
            continue
        path = Path(entry.path)
        info = parse_slice_filename(path)
        if info.index in files:
            raise KaggleFormatError(
                f"{path}: slice {info.index:04d} also exists as {files[info.index].path.name}; keep one file per slice."
            )
        files[info.index] = SliceFile(path, info)
    if not files:
        raise KaggleFormatError(f"{scans_dir}: no slice_*.png files; remove the empty case-day folder.")
    indices = sorted(files)
    missing = sorted(set(range(1, indices[-1] + 1)) - set(indices))
    if missing:
        raise KaggleFormatError(
            f"{scans_dir}: slices must be numbered 1..{indices[-1]} without gaps, missing "
            f"{short_list((f'{i:04d}' for i in missing), _MAX_LISTED)}; "
            "restore the missing PNGs."
        )
    slices = tuple(files[i] for i in indices)
    ref = slices[0].name
    for s in slices[1:]:
        n = s.name
        if (n.width, n.height, n.pixel_width, n.pixel_height) != (
            ref.width,
            ref.height,
            ref.pixel_width,
            ref.pixel_height,
        ):
            raise KaggleFormatError(
                f"{s.path}: size/spacing {n.width}x{n.height} {n.pixel_width}/{n.pixel_height} mm differs from "
                f"{slices[0].path.name}; all slices of a scan must share one geometry."
            )
    return Scan(case, day, scans_dir, slices)


def find_scans(root: str | os.PathLike, split: str = "train") -> list[Scan]:
    """List the scans of a Kaggle-layout folder.

    Args:
        root: the folder holding ``train.csv`` and ``train/`` (or ``test/``).
        split: the image sub-folder, ``"train"`` or ``"test"``.

    Returns:
        the scans sorted by ``(case, day)``.

    Raises:
        KaggleFormatError: when ``ROOT/split`` is missing, a folder name is not ``caseC``/``caseC_dayD``, a case-day
            has no ``scans`` folder, a file name is malformed, slice numbers have gaps or duplicates, or slices of
            one scan disagree in size or spacing.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise KaggleFormatError(
            f"{base}: folder not found; point to the dataset root that holds train.csv and {split}/caseC/..."
        )
    scans: list[Scan] = []
    for case_entry in _listdir(base):
        m = _CASE_DIR.fullmatch(case_entry.name)
        if not case_entry.is_dir() or m is None:
            raise KaggleFormatError(f"{case_entry.path}: expected only 'caseC' folders in {base}; move it away.")
        case = int(m.group(1))
        for day_entry in _listdir(Path(case_entry.path)):
            md = _DAY_DIR.fullmatch(day_entry.name)
            if not day_entry.is_dir() or md is None or int(md.group(1)) != case:
                raise KaggleFormatError(
                    f"{day_entry.path}: expected only 'case{case}_dayD' folders in {case_entry.path}; move it away."
                )
            scans_dir = Path(day_entry.path) / "scans"
            if not scans_dir.is_dir():
                raise KaggleFormatError(f"{scans_dir}: folder not found; each case-day keeps its PNGs in 'scans/'.")
            scans.append(_scan_from_folder(case, int(md.group(2)), scans_dir))
    if not scans:
        raise KaggleFormatError(f"{base}: no case folders found.")
    return sorted(scans, key=lambda s: (s.case, s.day))


def read_slice_png(path: str | os.PathLike, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read one 16-bit single-channel PNG slice.

    Args:
        path: the PNG file.
        shape: the expected ``(H, W)``; by default taken from a Kaggle file name when the name has that form.

    Returns:
        the ``uint16`` array of shape ``(H, W)``.

    Raises:
        KaggleFormatError: when the file is not a PNG, is truncated or corrupt, is 8-bit, colour or has alpha,
            or its size disagrees with ``shape`` / its file name.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if shape is None and _SLICE_NAME.fullmatch(path.name):
        shape = parse_slice_filename(path).shape
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                raise KaggleFormatError(f"{path}: not a PNG file (bad signature); re-download or re-export it as PNG.")
            fh.seek(0)
            with Image.open(fh) as img:
                mode = img.mode
                if mode in ("L", "P", "1"):
                    raise KaggleFormatError(
                        f"{path}: {mode!r} is an 8-bit (or palette) PNG, expected 16-bit grayscale; re-export it "
                        "with 16 bits per pixel (the Kaggle images are uint16)."
                    )
                if mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    raise KaggleFormatError(
                        f"{path}: {mode!r} is a colour or alpha PNG, expected a single-channel 16-bit grayscale image; "
                        "convert it to one channel before use."
                    )
                img.load()
                arr = np.asarray(img)
    except KaggleFormatError:
        raise
    except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as e:
        raise KaggleFormatError(f"{path}: truncated or corrupt PNG ({e}); re-download or re-export the file.") from e
    if arr.dtype != np.uint16:
        # Pillow versions that decode 16-bit PNGs to mode 'I' (int32)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
            raise KaggleFormatError(f"{path}: values outside 0..65535; expected a 16-bit grayscale PNG.")
        arr = arr.astype(np.uint16)
    if shape is not None and tuple(arr.shape) != tuple(int(s) for s in shape):
        raise KaggleFormatError(
            f"{path}: image is {arr.shape[1]}x{arr.shape[0]} (W x H) but {int(shape[1])}x{int(shape[0])} was expected "
            "from its file name (tokens are width then height); fix the file name or the image."
        )
    return arr


@dataclass(frozen=True)
class LabelRow:
    """One ``train.csv`` row.

    Attributes:
        line: 1-based line number in the csv file (the header is line 1).
        rle: the segmentation string, ``""`` when the organ is absent.
        end: last 1-based pixel covered by the runs (0 when empty), to check it against the image size.
    """

    line: int
    rle: str
    end: int


class TrainLabels:
    """The parsed and validated ``train.csv``: for every slice id, one :class:`LabelRow` per class.

    Args:
        path: the csv file (for messages).
        rows: ``id -> (large_bowel row, small_bowel row, stomach row)``.
    """

    def __init__(self, path: Path, rows: dict[str, tuple[LabelRow, LabelRow, LabelRow]]) -> None:
        self.path = path
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def nonempty(self, key: str) -> tuple[bool, bool, bool]:
        """Whether each class is present in slice ``key``.

        Args:
            key: the slice id.

        Returns:
            one flag per class, in :data:`CLASSES` order.
        """
        r = self.rows[key]
        return bool(r[0].rle), bool(r[1].rle), bool(r[2].rle)

    def check_fits(self, key: str, shape: Sequence[int], image: os.PathLike | str) -> None:
        """Check that the runs of slice ``key`` fit an image of ``shape``.

        Args:
            key: the slice id.
            shape: the image shape ``(H, W)``.
            image: the image file (for the message).

        Raises:
            KaggleFormatError: when a run ends past the last pixel.
        """
        n = int(shape[0]) * int(shape[1])
        for cls, row in zip(CLASSES, self.rows[key], strict=True):
            if row.end > n:
                raise KaggleFormatError(
                    f"{self.path} line {row.line}: {cls} runs end at pixel {row.end} but {image} has only "
                    f"{shape[1]}x{shape[0]} = {n} pixels; the RLE belongs to another image or width/height were "
                    "swapped (pixels are counted row by row over the (H, W) image)."
                )

    def mask(self, key: str, shape: Sequence[int]) -> np.ndarray:
        """Decode the three masks of slice ``key``.

        Args:
            key: the slice id.
            shape: the image shape ``(H, W)``.

        Returns:
            a ``uint8`` array ``(H, W, 3)``, channel ``k`` is class ``CLASSES[k]``.

        Raises:
            KaggleFormatError: when a run does not fit the image.
        """
        h, w = int(shape[0]), int(shape[1])
        out = np.zeros((h, w, len(CLASSES)), dtype=np.uint8)
        for k, row in enumerate(self.rows[key]):
            if row.rle:
                try:
                    out[..., k] = rle_decode(row.rle, (h, w), source=f"{self.path} line {row.line}")
                except RLEError as e:
                    raise KaggleFormatError(str(e)) from e
        return out


def read_train_csv(path: str | os.PathLike) -> TrainLabels:
    """Read and validate ``train.csv``.

    Args:
        path: the csv file with header ``id,class,segmentation``.

    Returns:
        the validated rows.

    Raises:
        KaggleFormatError: on a wrong header, a row without three fields, a malformed id, an unknown class, a
            duplicate ``(id, class)`` row, a slice without all three class rows, or a malformed RLE; the message
            names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise KaggleFormatError(f"{path}: file not found; the dataset root must hold train.csv.")
    pending: dict[str, list[LabelRow | None]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise KaggleFormatError(
                f"{path} line 1: header is {header!r}, expected 'id,class,segmentation'; is this the Kaggle train.csv?"
            )
        for fields in reader:
            line = reader.line_num
            where = f"{path} line {line}"
            if not fields:
                continue
            if len(fields) != 3:
                raise KaggleFormatError(
                    f"{where}: expected 3 fields (id,class,segmentation), got {len(fields)}; quote or fix the row."
                )
            key, cls, rle = fields[0].strip(), fields[1].strip(), fields[2].strip()
            parse_slice_id(key, source=where)
            if cls not in CLASSES:
                raise KaggleFormatError(
                    f"{where}: unknown class {cls!r}; expected one of {', '.join(CLASSES)}. Fix or remove the row."
                )
            try:
                end = rle_end(parse_rle(rle, source=where))
            except RLEError as e:
                raise KaggleFormatError(str(e)) from e
            slot = pending.setdefault(key, [None, None, None])
            k = CLASSES.index(cls)
            prev = slot[k]
            if prev is not None:
                raise KaggleFormatError(
                    f"{where}: duplicate row for id {key!r} class {cls!r} (first at line {prev.line}); remove one."
                )
            slot[k] = LabelRow(line, rle, end)
    rows: dict[str, tuple[LabelRow, LabelRow, LabelRow]] = {}
    for key, slot in pending.items():
        if any(r is None for r in slot):
            first = next(r for r in slot if r is not None)
            lacking = [c for c, r in zip(CLASSES, slot, strict=True) if r is None]
            raise KaggleFormatError(
                f"{path} line {first.line}: id {key!r} has no row for {', '.join(lacking)}; every slice needs three "
                "rows (large_bowel, small_bowel, stomach) with an empty segmentation where the organ is absent."
            )
        rows[key] = (slot[0], slot[1], slot[2])  # type: ignore[assignment]
    return TrainLabels(path, rows)


class KaggleDataset:
    """A validated Kaggle-layout folder: the scans of ``ROOT/train`` and, when present, their labels.

    Construction checks the whole folder without decoding pixels: file names and geometry (:func:`find_scans`),
    the csv (:func:`read_train_csv`), that every csv id has a PNG and every PNG has csv rows, and that every RLE fits
    the size in its PNG's file name. Pixels are read one scan at a time by :meth:`load_image` and
    :meth:`load_label`.

    Args:
        root: the folder holding ``train.csv`` and ``train/``.
        csv_path: the label file; default ``ROOT/train.csv``. Use ``labels=False`` for unlabelled data.
        split: image sub-folder, ``"train"`` or ``"test"``.
        labels: whether to read and cross-check labels.

    Raises:
        KaggleFormatError: on any inconsistency (see the functions above).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv_path: str | os.PathLike | None = None,
        split: str = "train",
        labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.scans: list[Scan] = find_scans(self.root, split)
        self.labels: TrainLabels | None = None
        if labels:
            self.labels = read_train_csv(Path(csv_path) if csv_path is not None else self.root / "train.csv")
            self._cross_check(self.labels)

    def _cross_check(self, labels: TrainLabels) -> None:
        seen: set[str] = set()
        orphans: list[str] = []
        for scan in self.scans:
            for s, key in zip(scan.slices, scan.slice_ids(), strict=True):
                if key not in labels:
                    orphans.append(f"{s.path} (id {key})")
                    continue
                seen.add(key)
                labels.check_fits(key, s.name.shape, s.path)
        if orphans:
            raise KaggleFormatError(
                f"{len(orphans)} PNG file(s) have no rows in {labels.path}: "
                f"{short_list(orphans, _MAX_LISTED, sep='; ')}. Add three rows per slice (large_bowel, small_bowel, "
                "stomach; empty segmentation when absent) or remove the PNGs."
            )
        missing = [k for k in labels if k not in seen]
        if missing:
            msgs = []
            for key in missing:
                c, d, i = parse_slice_id(key)
                msgs.append(
                    f"line {labels.rows[key][0].line} id {key} (expected "
                    f"{self.root}/train/case{c}/case{c}_day{d}/scans/slice_{i:04d}_W_H_PW_PH.png)"
                )
            raise KaggleFormatError(
                f"{len(missing)} id(s) in {labels.path} have no PNG: {short_list(msgs, _MAX_LISTED, sep='; ')}. "
                "Restore the images or delete their csv rows."
            )

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self) -> Iterator[Scan]:
        return iter(self.scans)

    def load_image(self, scan: Scan) -> np.ndarray:
        """Read the slices of ``scan`` into one volume.

        Args:
            scan: one of :attr:`scans`.

        Returns:
            a ``uint16`` array ``(H, W, D)``; ``[..., z]`` is the PNG of slice ``z + 1`` unchanged.

        Raises:
            KaggleFormatError: when a PNG is unreadable, not 16-bit grayscale, or disagrees with its file name.
        """
        h, w, d = scan.shape
        vol = np.empty((h, w, d), dtype=np.uint16)
        for z, s in enumerate(scan.slices):
            vol[..., z] = read_slice_png(s.path, (h, w))
        return vol

    def load_label(self, scan: Scan) -> np.ndarray:
        """Decode the masks of ``scan`` into one multi-label volume.

        Args:
            scan: one of :attr:`scans`.

        Returns:
            a ``uint8`` array ``(H, W, D, 3)`` of 0/1, channel ``k`` is ``CLASSES[k]``; overlaps are kept.

        Raises:
            ValueError: when the dataset was opened with ``labels=False``.
            KaggleFormatError: when a run does not fit the image.
        """
        if self.labels is None:
            raise ValueError("this KaggleDataset was opened with labels=False; it has no masks to load.")
        h, w, d = scan.shape
        vol = np.zeros((h, w, d, len(CLASSES)), dtype=np.uint8)
        for z, key in enumerate(scan.slice_ids()):
            vol[:, :, z, :] = self.labels.mask(key, (h, w))
        return vol

    def slice_presence(self, scan: Scan) -> np.ndarray:
        """Per-slice, per-class presence from the csv alone (no pixels decoded).

        Args:
            scan: one of :attr:`scans`.

        Returns:
            a ``bool`` array ``(D, 3)``.

        Raises:
            ValueError: when the dataset was opened with ``labels=False``.
        """
        if self.labels is None:
            raise ValueError("this KaggleDataset was opened with labels=False; it has no labels.")
        return np.array([self.labels.nonempty(k) for k in scan.slice_ids()], dtype=bool).reshape(-1, len(CLASSES))
