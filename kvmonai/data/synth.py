"""A synthetic stand-in for the UW-Madison GI Tract dataset, written in exactly the Kaggle layout.

:func:`write_synthetic_dataset` writes ``train.csv`` (``id,class,segmentation``, three rows per slice in the order
large_bowel, small_bowel, stomach, row-major 1-based RLE, empty field when absent), ``sample_submission.csv``
(header only, as in the public download) and ``train/caseC/caseC_dayD/scans/slice_SSSS_W_H_PW_PH.png`` as 16-bit
single-channel PNGs of shape (H, W).

What is modelled on the real data (see ``docs/data.md`` for the sources and for how it differs):

* non-contiguous case ids, 1 to 6 days per case with gaps between day numbers (the real days-per-case mix when
  ``days`` is not given), 144- or 80-slice scans (the 80-slice ones are the 276 x 276, 1.63 mm scans);
* the four image geometries (266 x 266, 360 x 310 and 234 x 234 at 1.50 mm, 276 x 276 at 1.63 mm) in their real
  proportions, every one of them present as soon as there are four scans;
* an abdomen with subcutaneous fat, muscle wall, spine, paraspinal and psoas muscles, liver, spleen, kidneys and
  bladder at plausible levels, and the three labelled organs: stomach upper image-right, large bowel as a frame
  (ascending colon image-left, descending image-right, transverse anterior, rectum/sigmoid low), small bowel as
  convoluted loops in the middle;
* each organ present over one contiguous slice range; the first slice and the last ~5 % of slices are empty and
  about 43 % of slices hold an organ; some pixels carry two classes;
* MR-like appearance: tissue texture, partial-volume blur, a smooth multiplicative bias field, Rician noise and a
  per-scan gain spread log-uniformly over more than 30x between scans.

Everything is deterministic for a given ``seed`` (and independent of the number of worker processes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kvmonai.data.kaggle import CLASSES, CSV_HEADER, format_slice_filename, scan_id, slice_id
from kvmonai.data.rle import rle_encode
from kvmonai.utils import write_text_atomic

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
_UINT16_MAX = 65535


@dataclass(frozen=True)
class ScanSpec:
    """Everything needed to render one synthetic case-day scan.

    Attributes:
        case: case number.
        day: day number.
        width: W in pixels.
        height: H in pixels.
        spacing: in-plane pixel spacing in mm (as written in the file name).
        depth: number of slices.
        gain: intensity of fat (before bias field and noise).
        seed: the dataset seed.
    """

    case: int
    day: int
    width: int
    height: int
    spacing: float
    depth: int
    gain: float
    seed: int

    @property
    def id(self) -> str:
        """``caseC_dayD``."""
        return scan_id(self.case, self.day)


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


class _SmoothField:
    """A band-limited Gaussian random field with unit variance, evaluated one slice at a time.

    Random values on a coarse grid are blended with Gaussian weights whose rows have unit L2 norm, so every pixel
    is a unit-variance Gaussian; ``cells`` sets the number of independent values along each axis.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[float, float, float]):
        self.mh = self._basis(shape[0], cells[0])
        self.mw = self._basis(shape[1], cells[1])
        self.md = self._basis(shape[2], cells[2])
        self.grid = rng.standard_normal((self.mh.shape[1], self.mw.shape[1], self.md.shape[1])).astype(np.float32)

    @staticmethod
    def _basis(n: int, cells: float) -> np.ndarray:
        cells = max(1.0, float(cells))
        step = n / cells
        centers = np.arange(-1.0, cells + 1.0 + 1e-9) * step + step / 2 - 0.5
        x = np.arange(n, dtype=np.float64)[:, None]
        m = np.exp(-0.5 * ((x - centers[None, :]) / (0.85 * step)) ** 2)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m.astype(np.float32)

    def __call__(self, z: int) -> np.ndarray:
        g = self.grid @ self.md[z]
        return self.mh @ g @ self.mw.T


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=iterations)


def _envelope(s: float) -> float:
    """Organ size along its slice range: small at both ends, never zero inside the range."""
    return 0.4 + 0.6 * math.sin(math.pi * min(max(s, 0.0), 1.0)) ** 0.8


def _ranges(rng: np.random.Generator, depth: int) -> dict[str, tuple[int, int]]:
    """Contiguous slice ranges (inclusive) of the three organs and their union."""
    a = 0.30 + rng.normal(0.0, 0.03)
    f = float(np.clip(0.43 + rng.normal(0.0, 0.03), 0.34, 0.52))
    last_free = max(1, round(0.05 * depth))  # the last slices of a scan carry no mask
    lo_limit, hi_limit = 1, depth - 1 - last_free
    a = float(np.clip(a, lo_limit / (depth - 1), max(lo_limit / (depth - 1), hi_limit / (depth - 1) - f)))

    def span(t0: float, t1: float) -> tuple[int, int]:
        z0 = int(np.clip(round(t0 * (depth - 1)), lo_limit, hi_limit))
        z1 = int(np.clip(round(t1 * (depth - 1)), z0, hi_limit))
        return z0, z1

    # real presence: large bowel 37 % of slices, small bowel 29 %, stomach 22 %, any 43 %
    lb = span(a, a + 0.86 * f)
    sb = span(a + 0.07 * f, a + 0.74 * f)
    st = span(a + 0.48 * f, a + f)
    return {"large_bowel": lb, "small_bowel": sb, "stomach": st}


class _ScanRenderer:
    """Renders the slices of one synthetic scan (see the module docstring for the anatomy)."""

    def __init__(self, spec: ScanSpec) -> None:
        self.spec = spec
        h, w, d = spec.height, spec.width, spec.depth
        patient = np.random.default_rng([spec.seed, 2, spec.case])  # shared by all days of a case
        rng = np.random.default_rng([spec.seed, 3, spec.case, spec.day])
        self.rng = rng
        sp = spec.spacing
        # body half-axes in mm (lateral, antero-posterior), kept inside the field of view
        a_mm = float(patient.uniform(135.0, 175.0))
        b_mm = float(patient.uniform(92.0, 125.0))
        self.a = min(a_mm, 0.46 * w * sp)
        self.b = min(b_mm, 0.43 * h * sp)
        self.fat = float(patient.uniform(0.06, 0.15))
        self.cx = w / 2 + rng.normal(0.0, 0.02 * w)
        self.cy = h / 2 + rng.normal(0.0, 0.02 * h) + 0.02 * h
        self.stomach_size = float(patient.uniform(0.8, 1.2))
        self.stomach_air = bool(rng.random() < 0.6)
        self.jit = rng.normal(0.0, 0.04, size=8)
        self.ranges = _ranges(rng, d)
        self.noise_sigma = float(rng.uniform(0.012, 0.03))
        self.blur = float(rng.uniform(0.45, 0.8))
        fov_h, fov_w, fov_d = h * sp, w * sp, d * 3.0
        self.f_body = _SmoothField(rng, (h, w, d), (2, 2, max(1.0, fov_d / 120)))
        self.f_haustra = _SmoothField(rng, (h, w, d), (fov_h / 30, fov_w / 30, max(1.0, fov_d / 15)))
        self.f_loops = _SmoothField(rng, (h, w, d), (fov_h / 22, fov_w / 22, max(1.0, fov_d / 20)))
        self.f_organ = _SmoothField(rng, (h, w, d), (fov_h / 60, fov_w / 60, max(1.0, fov_d / 40)))
        self.f_tex = _SmoothField(rng, (h, w, d), (fov_h / 7, fov_w / 7, max(1.0, fov_d / 9)))
        self.f_bias = _SmoothField(rng, (h, w, d), (2.5, 2.5, max(1.0, fov_d / 200)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.x_mm = (xx - self.cx) * sp  # image-right is +x (patient left)
        self.y_mm = (yy - self.cy) * sp  # image-down is +y (posterior)

    def _ellipse(self, x0: float, y0: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        """Squared normalised radius of an ellipse given in mm around the body centre."""
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.x_mm - x0, self.y_mm - y0
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        return u * u + v * v

    def slice(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Render slice ``z`` (0-based).

        Returns:
            the ``uint16`` image (H, W) and the ``bool`` masks (H, W, 3) in :data:`CLASSES` order.
        """
        spec, j = self.spec, self.jit
        d = spec.depth
        t = z / max(d - 1, 1)  # 0 = inferior end, 1 = superior end
        a = self.a * (1.0 + 0.05 * math.sin(math.pi * t))
        b = self.b * (1.0 + 0.04 * math.sin(math.pi * t + 0.5))
        u, v = self.x_mm / a, self.y_mm / b
        v_eff = np.where(v > 0, v * 1.08, v)  # flatter back
        rho = np.sqrt(u * u + v_eff * v_eff) * (1.0 + 0.035 * self.f_body(z))
        tex = self.f_tex(z)
        inner = 1.0 - self.fat
        cavity = rho < inner - 0.07

        img = np.zeros(rho.shape, dtype=np.float32)
        body = rho < 1.0
        img[body] = 1.0
        img[(rho < inner) & body] = 0.34  # abdominal wall muscle
        img[cavity] = 0.8  # visceral fat

        def paint(region: np.ndarray, level: float, texture: float = 0.06) -> None:
            img[region] = level * (1.0 + texture * tex[region])

        # retroperitoneum, bones and solid organs
        wall = body & (rho < 0.97)
        spine_y = 0.52 * b
        paint(wall & (self._ellipse(-36, spine_y + 17, 27, 20) < 1), 0.3)
        paint(wall & (self._ellipse(36, spine_y + 17, 27, 20) < 1), 0.3)
        paint(self._ellipse(0, spine_y, 20, 17) < 1, 0.5, 0.15)
        paint(self._ellipse(0, spine_y + 23, 7, 7) < 1, 0.2, 0.02)
        if t < 0.55:  # psoas
            paint(self._ellipse(-40, 0.36 * b, 17, 15) < 1, 0.3)
            paint(self._ellipse(40, 0.36 * b, 17, 15) < 1, 0.3)
        if t < 0.3:  # iliac wings: cortex dark, marrow bright
            e = _envelope(t / 0.3)
            for sx in (-1.0, 1.0):
                rr = self._ellipse(sx * 0.62 * a, 0.3 * b, 0.22 * a * e, 0.12 * b, sx * 0.6)
                paint(cavity & (rr < 1), 0.15, 0.02)
                paint(cavity & (rr < 0.55), 0.7, 0.1)
        if 0.55 <= t <= 0.85:  # kidneys
            e = _envelope((t - 0.55) / 0.3)
            paint(self._ellipse(-70, 0.3 * b, 24 * e, 36 * e, 0.3) < 1, 0.55, 0.08)
            paint(self._ellipse(70, 0.3 * b, 24 * e, 36 * e, -0.3) < 1, 0.55, 0.08)
        if t > 0.62:  # liver, image-left (patient right)
            e = _envelope(min(1.0, (t - 0.62) / 0.45))
            paint((self._ellipse(-0.42 * a, -0.05 * b, 0.55 * a * e, 0.72 * b * e, 0.2) < 1) & cavity, 0.42)
        if t > 0.7:  # spleen, posterior image-right
            e = _envelope((t - 0.7) / 0.35)
            paint((self._ellipse(0.58 * a, 0.32 * b, 0.2 * a * e, 0.3 * b * e, -0.5) < 1) & cavity, 0.5)
        if t < 0.22:  # bladder
            e = _envelope(t / 0.22)
            paint((self._ellipse(0, -0.2 * b, 0.3 * a * e, 0.33 * b * e) < 1) & cavity, 0.9, 0.02)

        masks = np.zeros((*rho.shape, 3), dtype=bool)
        lb0, lb1 = self.ranges["large_bowel"]
        sb0, sb1 = self.ranges["small_bowel"]
        st0, st1 = self.ranges["stomach"]
        organ_noise = self.f_organ(z)

        stomach = large = small = None
        if st0 <= z <= st1:  # stomach: upper image-right (anterior, patient left)
            s = (z - st0) / max(st1 - st0, 1)
            e = _envelope(s) * self.stomach_size
            x0, y0 = (0.34 + 0.1 * s + j[5]) * a, (-0.3 + 0.08 * s + j[6]) * b
            rr = self._ellipse(x0, y0, 0.33 * a * e, 0.27 * b * e, -0.5 + 0.3 * s)
            stomach = self._ensure((rr < 1.0 + 0.25 * organ_noise) & cavity, x0, y0)
            air_line = y0 - 0.45 * 0.27 * b * e if self.stomach_air and s > 0.45 else None

        if lb0 <= z <= lb1:  # large bowel: a frame around the abdomen
            s = (z - lb0) / max(lb1 - lb0, 1)
            theta = np.arctan2(v, u)  # 0 image-right, -pi/2 anterior (up), pi/2 posterior
            ring_r = 0.64 + 0.03 * j[2]
            half = 0.085 * (1.0 + 0.45 * self.f_haustra(z))
            radius = np.sqrt(u * u + v * v)
            band = np.abs(radius - ring_r) < half
            m = np.zeros_like(band)
            if 0.18 <= s <= 0.97:  # ascending colon, image-left (patient right)
                m |= band & (np.abs(np.angle(np.exp(1j * (theta - math.pi)))) < 0.5 + 0.1 * j[3])
            if 0.1 <= s <= 0.97:  # descending colon, image-right
                m |= band & (np.abs(theta) < 0.5 + 0.1 * j[4])
            if 0.62 <= s <= 0.93:  # transverse colon across the front
                sag = 0.06 * np.cos(theta + math.pi / 2)
                tband = np.abs(radius - (ring_r - 0.04 - sag)) < half
                m |= tband & (theta < -0.25) & (theta > -math.pi + 0.25)
            if s < 0.26:  # rectum, in front of the sacrum
                m |= self._ellipse(0.0, 0.38 * b, 0.13 * a, 0.16 * b) < 1.0 + 0.3 * organ_noise
            if 0.06 <= s <= 0.32:  # sigmoid loop, low image-right
                m |= self._ellipse(0.3 * a, 0.18 * b, 0.13 * a, 0.13 * b, 3.0 * s) < 1.0 + 0.3 * organ_noise
            m &= cavity
            if stomach is not None:  # organs touch; labels overlap only along the shared border
                m &= ~_erode(stomach, 2)
            large = self._ensure(m, 0.6 * a, 0.0)

        if sb0 <= z <= sb1:  # small bowel: convoluted loops filling the middle of the abdomen
            s = (z - sb0) / max(sb1 - sb0, 1)
            e = _envelope(s)
            x0, y0 = (-0.05 + j[0]) * a, (0.06 + j[1]) * b
            region = (self._ellipse(x0, y0, 0.58 * a * e, 0.56 * b * e) < 1) & cavity
            loops = np.abs(self.f_loops(z))
            m = region & (loops < 0.34)
            for other in (large, stomach):
                if other is not None:
                    m &= ~_erode(other, 2)
            small = self._ensure(m, x0, y0)
            paint(region & (np.abs(loops - 0.4) < 0.06) & ~small, 0.3, 0.05)  # bowel wall and mesentery

        # paint small bowel, large bowel, stomach; where labels overlap the later organ shows
        if small is not None:
            masks[..., 1] = small
            paint(small, 0.58, 0.2)
        if large is not None:
            masks[..., 0] = large
            paint(large, 0.38, 0.35)
        if stomach is not None:
            masks[..., 2] = stomach
            paint(stomach, 0.62, 0.12)
            if air_line is not None:
                img[stomach & (self.y_mm < air_line)] = 0.04

        # acquisition: bias field, partial-volume blur, gain, Rician noise
        from scipy.ndimage import gaussian_filter

        bias = np.exp(0.22 * self.f_bias(z)) * (1.0 + 0.12 * np.abs(v).clip(0, 1.2))
        img = gaussian_filter(img * bias, self.blur) * spec.gain
        sigma = self.noise_sigma * spec.gain
        n = self.rng.standard_normal((2, *img.shape), dtype=np.float32) * sigma
        img = np.sqrt((img + n[0]) ** 2 + n[1] ** 2)
        return np.clip(np.rint(img), 0, _UINT16_MAX).astype(np.uint16), masks

    def _ensure(self, m: np.ndarray, x0: float, y0: float) -> np.ndarray:
        """Keep an organ non-empty on every slice of its range (contiguous presence)."""
        if m.any():
            return m
        r = max(6.0, 2.5 * self.spec.spacing)
        return self._ellipse(x0, y0, r, r) < 1


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run the many small matrix products single-threaded.

    A multi-threaded BLAS spends more time synchronising than computing on these sizes, up to 8x slower on a
    loaded 2-core machine. ``threadpoolctl`` (installed with scikit-learn) is used when available.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def iter_scan_slices(spec: ScanSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Render the slices of one scan in order.

    Args:
        spec: the scan (from :func:`plan_dataset`).

    Yields:
        ``(image, masks)``: ``uint16`` (H, W) and ``bool`` (H, W, 3) in :data:`CLASSES` order.
    """
    renderer = _ScanRenderer(spec)
    for z in range(spec.depth):
        with _single_threaded_blas():
            out = renderer.slice(z)
        yield out


def generate_scan(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render one whole scan in memory.

    Args:
        spec: the scan (from :func:`plan_dataset`).

    Returns:
        the ``uint16`` image ``(H, W, D)`` and the ``uint8`` multi-label mask ``(H, W, D, 3)``.
    """
    image = np.empty((spec.height, spec.width, spec.depth), dtype=np.uint16)
    label = np.empty((spec.height, spec.width, spec.depth, 3), dtype=np.uint8)
    for z, (img, m) in enumerate(iter_scan_slices(spec)):
        image[..., z] = img
        label[:, :, z, :] = m
    return image, label


def _write_png(path: Path, arr: np.ndarray, compress_level: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _write_scan(root: Path, spec: ScanSpec, compress_level: int) -> tuple[list[str], int, list[int]]:
    """Write the PNGs of one scan; return its csv lines, its number of non-empty slices and class slice counts."""
    scans = root / "train" / f"case{spec.case}" / spec.id / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    nonempty = 0
    per_class = [0, 0, 0]
    for z, (img, masks) in enumerate(iter_scan_slices(spec)):
        name = format_slice_filename(z + 1, spec.width, spec.height, spec.spacing, spec.spacing)
        _write_png(scans / name, img, compress_level)
        key = slice_id(spec.case, spec.day, z + 1)
        any_organ = False
        for k, cls in enumerate(CLASSES):
            rle = rle_encode(masks[..., k])
            lines.append(f"{key},{cls},{rle}")
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
    results: list[tuple[list[str], int, list[int]] | None] = [None] * len(specs)

    from tqdm.auto import tqdm

    with tqdm(total=total, unit="slice", desc="synth", disable=not progress) as bar:
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

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(CSV_HEADER)
    nonempty, per_class = 0, [0, 0, 0]
    for res in results:
        assert res is not None
        lines, ne, pc = res
        buf.write("\n".join(lines) + "\n")
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
    write_text_atomic(root / "train.csv", buf.getvalue())
    logger.info(
        "wrote %d scans, %d slices (%.1f %% with an organ) to %s", len(specs), total, 100 * nonempty / total, root
    )
    return summary
