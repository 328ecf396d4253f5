"""A synthetic stand-in for the UW-Madison GI Tract dataset, written in exactly the Kaggle layout.

:func:`plan_dataset` decides the scans, :mod:`kvmonai.data.phantom` renders them (the anatomy, its labels and the
MR-like appearance) and :func:`write_synthetic_dataset` writes them, in worker processes: ``train.csv``
(``id,class,segmentation``, three rows per slice in the order large_bowel, small_bowel, stomach, row-major 1-based
RLE, empty field when absent), ``sample_submission.csv`` (header only, as in the public download) and
``train/caseC/caseC_dayD/scans/slice_SSSS_W_H_PW_PH.png`` as 16-bit single-channel PNGs of shape (H, W).

What is modelled on the real data (see ``docs/data.md`` for the sources and for how it differs):

* non-contiguous case ids, 1 to 6 days per case with gaps between day numbers (the real days-per-case mix when
  ``days`` is not given), 144- or 80-slice scans (the 80-slice ones are the 276 x 276, 1.63 mm scans);
* the four image geometries (266 x 266, 360 x 310 and 234 x 234 at 1.50 mm, 276 x 276 at 1.63 mm) in their real
  proportions, every one of them present as soon as there are four scans;
* a per-scan gain spread log-uniformly over more than 30x between scans;
* the anatomy of :mod:`kvmonai.data.phantom`.

Everything is deterministic for a given ``seed`` (and independent of the number of worker processes).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kvmonai.data.kaggle import CLASSES, CSV_HEADER, format_slice_filename, slice_id
from kvmonai.data.phantom import ScanSpec, generate_scan, iter_scan_slices
from kvmonai.data.rle import rle_encode
from kvmonai.utils import atomic_output, csv_text, write_text_atomic

# ScanSpec, generate_scan and iter_scan_slices live in kvmonai.data.phantom; they stay importable from here
__all__ = [
    "DAYS_PER_CASE",
    "GEOMETRIES",
    "Geometry",
    "ScanSpec",
    "SynthSummary",
    "generate_scan",
    "iter_scan_slices",
    "plan_dataset",
    "write_synthetic_dataset",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """An image geometry of the real dataset.

    Attributes:
        width: image width W (columns) in pixels.
        height: image height H (rows) in pixels.
        spacing: in-plane pixel spacing in mm (the same along both axes).
        depth: number of slices of such scans.
        count: number of such scans among the 274 of the Kaggle train set.
    """

    width: int
    height: int
    spacing: float
    depth: int
    count: int


#: the real geometries and how many of the 274 train scans use each (259 x 144 + 15 x 80 = 38,496 slices)
GEOMETRIES: tuple[Geometry, ...] = (
    Geometry(266, 266, 1.50, 144, 180),
    Geometry(360, 310, 1.50, 144, 78),
    Geometry(276, 276, 1.63, 80, 15),
    Geometry(234, 234, 1.50, 144, 1),
)
#: number of cases having 1..6 scanned days in the real train set (85 cases, 274 scans)
DAYS_PER_CASE: dict[int, int] = {1: 9, 2: 8, 3: 45, 4: 2, 5: 20, 6: 1}

_GAIN_RANGE = (250.0, 9000.0)  # intensity of fat before bias and noise; the real max is about 15,900


def _allocate(total: int, weights: Sequence[float], at_least_one: bool = False) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=float)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    if at_least_one and total >= len(w):
        while (counts == 0).any():
            counts[int(np.argmax(counts))] -= 1
            counts[int(np.flatnonzero(counts == 0)[0])] += 1
    return counts.tolist()


def _day_numbers(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` increasing day numbers within 0..39 with irregular gaps (e.g. 0, 13, 15, 18)."""
    gaps = rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 12], size=n - 1)
    if gaps.sum() > 39:
        gaps = np.maximum(1, np.floor(gaps * 39 / gaps.sum())).astype(int)
    first = 0 if rng.random() < 0.45 else int(rng.integers(1, 21))
    first = min(first, 39 - int(gaps.sum()))
    return (first + np.concatenate([[0], np.cumsum(gaps)])).astype(int).tolist()


def plan_dataset(
    cases: int = 3,
    seed: int = 0,
    days: int | None = None,
    slices: int | None = None,
    scale: float = 1.0,
) -> list[ScanSpec]:
    """Decide the case ids, days, geometry, depth and gain of every synthetic scan.

    With ``cases=85`` and defaults this reproduces the real train set's counts exactly: 274 scans, 38,496 slices,
    the days-per-case mix of :data:`DAYS_PER_CASE` and the geometry counts of :data:`GEOMETRIES`.

    Args:
        cases: number of cases (patients).
        seed: random seed.
        days: days per case; by default drawn to follow the real mix (1 to 6 days).
        slices: slices per scan, overriding the real 144/80 (use a small number for tests).
        scale: factor on image width and height (spacing divided by it, so the anatomy keeps its size in mm);
            ``1.0`` gives the real sizes; smaller values make fast test data.

    Returns:
        the scans in the order their rows go to ``train.csv`` (cases shuffled, days ascending).

    Raises:
        ValueError: when an argument is out of range.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}.")
    if days is not None and not 1 <= days <= 40:
        raise ValueError(f"days must be between 1 and 40, got {days}.")
    if slices is not None and slices < 3:
        raise ValueError(f"slices must be >= 3 (first slice and last slices stay empty), got {slices}.")
    if not 0.05 <= scale <= 4.0:
        raise ValueError(f"scale must be between 0.05 and 4, got {scale}.")
    rng = np.random.default_rng([seed, 1])
    pool = max(156, 2 * cases + 2)
    case_ids = np.sort(rng.choice(np.arange(2, pool + 1), size=cases, replace=False)).tolist()
    if days is None:
        counts = _allocate(cases, list(DAYS_PER_CASE.values()))
        n_days = [k for k, c in zip(DAYS_PER_CASE, counts, strict=True) for _ in range(c)]
        rng.shuffle(n_days)
    else:
        n_days = [days] * cases
    pairs = [(c, d) for c, k in zip(case_ids, n_days, strict=True) for d in _day_numbers(rng, k)]
    n_scans = len(pairs)
    geo_counts = _allocate(n_scans, [g.count for g in GEOMETRIES], at_least_one=True)
    geos = [g for g, c in zip(GEOMETRIES, geo_counts, strict=True) for _ in range(c)]
    rng.shuffle(geos)
    # evenly spaced log-gains, shuffled: lowest and highest scan always differ by the full 36x range
    q = np.linspace(0.0, 1.0, n_scans) if n_scans > 1 else np.array([0.5])
    rng.shuffle(q)
    lo, hi = np.log(_GAIN_RANGE[0]), np.log(_GAIN_RANGE[1])
    gains = np.exp(lo + q * (hi - lo))
    specs = []
    for (c, d), g, gain in zip(pairs, geos, gains, strict=True):
        w, h = max(16, round(g.width * scale)), max(16, round(g.height * scale))
        spacing = float(f"{g.spacing / scale:.2f}")
        specs.append(ScanSpec(c, d, w, h, spacing, slices if slices is not None else g.depth, float(gain), seed))
    order = rng.permutation(case_ids).tolist()
    return sorted(specs, key=lambda s: (order.index(s.case), s.day))


def _write_png(path: Path, arr: np.ndarray, compress_level: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _write_scan(root: Path, spec: ScanSpec, compress_level: int) -> tuple[list[tuple[str, str, str]], int, list[int]]:
    """Write the PNGs of one scan; return its ``train.csv`` rows (:data:`CSV_HEADER` order), its number of non-empty
    slices and class slice counts."""
    scans = root / "train" / f"case{spec.case}" / spec.id / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[str, str, str]] = []
    nonempty = 0
    per_class = [0, 0, 0]
    for z, (img, masks) in enumerate(iter_scan_slices(spec)):
        name = format_slice_filename(z + 1, spec.width, spec.height, spec.spacing, spec.spacing)
        _write_png(scans / name, img, compress_level)
        key = slice_id(spec.case, spec.day, z + 1)
        any_organ = False
        for k, cls in enumerate(CLASSES):
            rle = rle_encode(masks[..., k])
            lines.append((key, cls, rle))
            if rle:
                any_organ = True
                per_class[k] += 1
        nonempty += any_organ
    return lines, nonempty, per_class


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` wrote.

    Attributes:
        root: the output folder.
        cases: number of cases.
        scans: number of case-day scans.
        slices: number of PNG slices.
        nonempty_slices: slices with at least one organ.
        class_slices: slices holding each class, in :data:`CLASSES` order.
    """

    root: str
    cases: int
    scans: int
    slices: int
    nonempty_slices: int
    class_slices: tuple[int, int, int]


def _write_scans(
    root: Path, specs: Sequence[ScanSpec], workers: int, compress_level: int, progress: bool
) -> list[tuple[list[tuple[str, str, str]], int, list[int]] | None]:
    """:func:`_write_scan` for every spec, in ``workers`` processes; the results in the order of ``specs``."""
    from tqdm.auto import tqdm

    results: list[tuple[list[tuple[str, str, str]], int, list[int]] | None] = [None] * len(specs)
    with tqdm(total=sum(s.depth for s in specs), unit="slice", desc="synth", disable=not progress) as bar:
        if workers == 1:
            for i, spec in enumerate(specs):
                results[i] = _write_scan(root, spec, compress_level)
                bar.update(spec.depth)
        else:
            # spawn, not fork: the parent may hold threads (tqdm, torch) whose locks a forked child would inherit
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_write_scan, root, spec, compress_level): i for i, spec in enumerate(specs)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.update(specs[i].depth)
    return results


def write_synthetic_dataset(
    out: str | os.PathLike,
    cases: int = 3,
    seed: int = 0,
    days: int | None = None,
    slices: int | None = None,
    scale: float = 1.0,
    workers: int = 1,
    compress_level: int = 1,
    progress: bool = True,
) -> SynthSummary:
    """Write a synthetic dataset in the Kaggle layout.

    ``train.csv`` is written last (atomically), so a folder without it is an interrupted run.

    Args:
        out: output folder; must not already hold ``train.csv`` or ``train/``.
        cases: number of cases; ``85`` reproduces the real 274 scans / 38,496 slices.
        seed: random seed; the output is identical for equal arguments (whatever ``workers``).
        days: days per case (default: the real mix).
        slices: slices per scan (default: 144, or 80 for the 276 x 276 scans).
        scale: image size factor (default 1: the real sizes); see :func:`plan_dataset`.
        workers: number of processes rendering scans in parallel.
        compress_level: zlib level of the PNGs (0-9; the pixels are the same whatever the level).
        progress: show a tqdm progress bar.

    Returns:
        a summary of what was written.

    Raises:
        FileExistsError: when ``out`` already holds a dataset.
        ValueError: when an argument is out of range.
    """
    root = Path(out)
    if (root / "train.csv").exists() or (root / "train").exists():
        raise FileExistsError(
            f"{root}: already holds train.csv or train/; choose an empty folder or delete the old dataset first."
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be 0..9, got {compress_level}.")
    specs = plan_dataset(cases=cases, seed=seed, days=days, slices=slices, scale=scale)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(s.depth for s in specs)
    results = _write_scans(root, specs, workers, compress_level, progress)
    nonempty, per_class = 0, [0, 0, 0]
    for res in results:
        assert res is not None
        _, ne, pc = res
        nonempty += ne
        per_class = [p + q for p, q in zip(per_class, pc, strict=True)]
    write_text_atomic(root / "sample_submission.csv", "id,class,predicted\n")
    summary = SynthSummary(str(root), cases, len(specs), total, nonempty, (per_class[0], per_class[1], per_class[2]))
    meta = {
        "generator": "kvmonai.data.synth",
        "arguments": {"cases": cases, "seed": seed, "days": days, "slices": slices, "scale": scale},
        "summary": {k: v for k, v in asdict(summary).items() if k != "root"},  # reproducible: no paths
        "scans": [asdict(s) for s in specs],
    }
    write_text_atomic(root / "synthetic.json", json.dumps(meta, indent=1) + "\n")
    rows = (dict(zip(CSV_HEADER, line, strict=True)) for res in results if res for line in res[0])
    write_text_atomic(root / "train.csv", csv_text(rows, CSV_HEADER))
    logger.info(
        "wrote %d scans, %d slices (%.1f %% with an organ) to %s", len(specs), total, 100 * nonempty / total, root
    )
    return summary
