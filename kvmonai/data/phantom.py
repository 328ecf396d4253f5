"""The anatomy phantom behind the synthetic dataset: renders the slices of one case-day scan, image and labels.

:func:`iter_scan_slices` and :func:`generate_scan` render a :class:`ScanSpec`; :mod:`kvmonai.data.synth` plans
the scans and writes them in the Kaggle layout. What the phantom models (see ``docs/data.md`` for the sources and
for how it differs from the real data):

* an abdomen with subcutaneous fat, muscle wall, spine, paraspinal and psoas muscles, iliac wings, kidneys, liver,
  spleen and bladder at plausible levels, and the three labelled organs: stomach upper image-right, large bowel as
  a frame (ascending colon image-left, descending image-right, transverse anterior, rectum/sigmoid low), small
  bowel as convoluted loops in the middle;
* each organ present over one contiguous slice range; the first slice and the last ~5 % of slices are empty and
  about 43 % of slices hold an organ; some pixels carry two classes;
* MR-like appearance: tissue texture, partial-volume blur, a smooth multiplicative bias field, Rician noise and the
  scan's gain.

Everything is deterministic for a given :class:`ScanSpec`: the anatomy of a case is drawn from ``(seed, case)``
(shared by its days), the position, bowel content and noise of a scan from ``(seed, case, day)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kvmonai.data.kaggle import scan_id

__all__ = ["ScanSpec", "generate_scan", "iter_scan_slices"]

_UINT16_MAX = 65535
#: label channels, in ``kvmonai.data.CLASSES`` order
_LARGE_BOWEL, _SMALL_BOWEL, _STOMACH = 0, 1, 2


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
    """Contiguous slice ranges (inclusive) of the three organs."""
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


@dataclass
class _Section:
    """One slice while it is painted: its body outline (in body-axis units) and the float image so far.

    Attributes:
        z: slice index (0-based).
        t: position along the scan, 0 at the inferior end, 1 at the superior end.
        a: lateral body half-axis on this slice, mm.
        b: antero-posterior body half-axis on this slice, mm.
        u: lateral coordinate in units of ``a``.
        v: antero-posterior coordinate in units of ``b``.
        rho: normalised body radius, with a flatter back and a wavy outline.
        body: inside the skin.
        cavity: inside the abdominal cavity (inside the muscle wall).
        tex: tissue texture field of this slice.
        organ_noise: shape noise of the labelled organs' outlines.
        img: the image (float, fat = 1) painted so far.
    """

    z: int
    t: float
    a: float
    b: float
    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    body: np.ndarray
    cavity: np.ndarray
    tex: np.ndarray
    organ_noise: np.ndarray
    img: np.ndarray

    def paint(self, region: np.ndarray, level: float, texture: float = 0.06) -> None:
        """Set ``region`` to tissue of intensity ``level`` (fat = 1) with ``texture`` relative variation."""
        self.img[region] = level * (1.0 + texture * self.tex[region])


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

    def slice(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Render slice ``z`` (0-based).

        Returns:
            the ``uint16`` image (H, W) and the ``bool`` masks (H, W, 3) in ``kvmonai.data.CLASSES`` order.
        """
        sec = self._section(z)
        self._paint_body_wall(sec)
        for paint_organ in (
            self._paint_spine_and_back_muscles,
            self._paint_iliac_wings,
            self._paint_kidneys,
            self._paint_liver,
            self._paint_spleen,
            self._paint_bladder,
        ):
            paint_organ(sec)
        stomach, air_line = self._stomach(sec)
        large = self._large_bowel(sec, stomach)
        small = self._small_bowel(sec, large, stomach)
        masks = self._paint_labelled_organs(sec, small, large, stomach, air_line)
        return self._acquire(sec), masks

    # -- geometry ------------------------------------------------------------------------------------------------

    def _ellipse(self, x0: float, y0: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        """Squared normalised radius of an ellipse given in mm around the body centre."""
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.x_mm - x0, self.y_mm - y0
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        return u * u + v * v

    def _position(self, organ: str, z: int) -> float | None:
        """Where slice ``z`` lies in the slice range of ``organ`` (0 first slice, 1 last), ``None`` outside it."""
        z0, z1 = self.ranges[organ]
        return (z - z0) / max(z1 - z0, 1) if z0 <= z <= z1 else None

    def _ensure(self, m: np.ndarray, x0: float, y0: float) -> np.ndarray:
        """Keep an organ non-empty on every slice of its range (contiguous presence)."""
        if m.any():
            return m
        r = max(6.0, 2.5 * self.spec.spacing)
        return self._ellipse(x0, y0, r, r) < 1

    def _section(self, z: int) -> _Section:
        """The body outline of slice ``z`` (the body breathes a little along the scan) and an empty image."""
        t = z / max(self.spec.depth - 1, 1)  # 0 = inferior end, 1 = superior end
        a = self.a * (1.0 + 0.05 * math.sin(math.pi * t))
        b = self.b * (1.0 + 0.04 * math.sin(math.pi * t + 0.5))
        u, v = self.x_mm / a, self.y_mm / b
        v_eff = np.where(v > 0, v * 1.08, v)  # flatter back
        rho = np.sqrt(u * u + v_eff * v_eff) * (1.0 + 0.035 * self.f_body(z))
        tex = self.f_tex(z)
        cavity = rho < 1.0 - self.fat - 0.07
        img = np.zeros(rho.shape, dtype=np.float32)
        return _Section(z, t, a, b, u, v, rho, rho < 1.0, cavity, tex, self.f_organ(z), img)

    # -- unlabelled anatomy, painted in this order (later tissue covers earlier) ---------------------------------

    def _paint_body_wall(self, sec: _Section) -> None:
        """Subcutaneous fat, the abdominal wall muscle and the visceral fat inside it."""
        inner = 1.0 - self.fat
        sec.img[sec.body] = 1.0
        sec.img[(sec.rho < inner) & sec.body] = 0.34  # abdominal wall muscle
        sec.img[sec.cavity] = 0.8  # visceral fat

    def _paint_spine_and_back_muscles(self, sec: _Section) -> None:
        """Paraspinal muscles, vertebral body and spinal canal on every slice; psoas in the lower half."""
        wall = sec.body & (sec.rho < 0.97)
        spine_y = 0.52 * sec.b
        sec.paint(wall & (self._ellipse(-36, spine_y + 17, 27, 20) < 1), 0.3)
        sec.paint(wall & (self._ellipse(36, spine_y + 17, 27, 20) < 1), 0.3)
        sec.paint(self._ellipse(0, spine_y, 20, 17) < 1, 0.5, 0.15)
        sec.paint(self._ellipse(0, spine_y + 23, 7, 7) < 1, 0.2, 0.02)
        if sec.t < 0.55:  # psoas
            sec.paint(self._ellipse(-40, 0.36 * sec.b, 17, 15) < 1, 0.3)
            sec.paint(self._ellipse(40, 0.36 * sec.b, 17, 15) < 1, 0.3)

    def _paint_iliac_wings(self, sec: _Section) -> None:
        """Iliac wings low in the scan: cortex dark, marrow bright."""
        if sec.t >= 0.3:
            return
        a, b = sec.a, sec.b
        e = _envelope(sec.t / 0.3)
        for sx in (-1.0, 1.0):
            rr = self._ellipse(sx * 0.62 * a, 0.3 * b, 0.22 * a * e, 0.12 * b, sx * 0.6)
            sec.paint(sec.cavity & (rr < 1), 0.15, 0.02)
            sec.paint(sec.cavity & (rr < 0.55), 0.7, 0.1)

    def _paint_kidneys(self, sec: _Section) -> None:
        """Both kidneys, posterior, in the upper middle of the scan."""
        if not 0.55 <= sec.t <= 0.85:
            return
        e = _envelope((sec.t - 0.55) / 0.3)
        sec.paint(self._ellipse(-70, 0.3 * sec.b, 24 * e, 36 * e, 0.3) < 1, 0.55, 0.08)
        sec.paint(self._ellipse(70, 0.3 * sec.b, 24 * e, 36 * e, -0.3) < 1, 0.55, 0.08)

    def _paint_liver(self, sec: _Section) -> None:
        """The liver, image-left (patient right), high in the scan."""
        if sec.t <= 0.62:
            return
        a, b = sec.a, sec.b
        e = _envelope(min(1.0, (sec.t - 0.62) / 0.45))
        sec.paint((self._ellipse(-0.42 * a, -0.05 * b, 0.55 * a * e, 0.72 * b * e, 0.2) < 1) & sec.cavity, 0.42)

    def _paint_spleen(self, sec: _Section) -> None:
        """The spleen, posterior image-right, high in the scan."""
        if sec.t <= 0.7:
            return
        a, b = sec.a, sec.b
        e = _envelope((sec.t - 0.7) / 0.35)
        sec.paint((self._ellipse(0.58 * a, 0.32 * b, 0.2 * a * e, 0.3 * b * e, -0.5) < 1) & sec.cavity, 0.5)

    def _paint_bladder(self, sec: _Section) -> None:
        """The bladder, anterior, at the inferior end of the scan."""
        if sec.t >= 0.22:
            return
        a, b = sec.a, sec.b
        e = _envelope(sec.t / 0.22)
        sec.paint((self._ellipse(0, -0.2 * b, 0.3 * a * e, 0.33 * b * e) < 1) & sec.cavity, 0.9, 0.02)

    # -- labelled organs -----------------------------------------------------------------------------------------

    def _stomach(self, sec: _Section) -> tuple[np.ndarray | None, float | None]:
        """Stomach mask, upper image-right (anterior, patient left), and the level of its air pocket (``y`` in mm).

        Both are ``None`` outside the stomach's slice range; the air level is ``None`` where there is no air.
        """
        s = self._position("stomach", sec.z)
        if s is None:
            return None, None
        a, b, j = sec.a, sec.b, self.jit
        e = _envelope(s) * self.stomach_size
        x0, y0 = (0.34 + 0.1 * s + j[5]) * a, (-0.3 + 0.08 * s + j[6]) * b
        rr = self._ellipse(x0, y0, 0.33 * a * e, 0.27 * b * e, -0.5 + 0.3 * s)
        stomach = self._ensure((rr < 1.0 + 0.25 * sec.organ_noise) & sec.cavity, x0, y0)
        air_line = y0 - 0.45 * 0.27 * b * e if self.stomach_air and s > 0.45 else None
        return stomach, air_line

    def _large_bowel(self, sec: _Section, stomach: np.ndarray | None) -> np.ndarray | None:
        """Large bowel mask: a frame around the abdomen (colon segments by slice position); ``None`` outside."""
        s = self._position("large_bowel", sec.z)
        if s is None:
            return None
        a, b, u, v, j = sec.a, sec.b, sec.u, sec.v, self.jit
        theta = np.arctan2(v, u)  # 0 image-right, -pi/2 anterior (up), pi/2 posterior
        ring_r = 0.64 + 0.03 * j[2]
        half = 0.085 * (1.0 + 0.45 * self.f_haustra(sec.z))
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
            m |= self._ellipse(0.0, 0.38 * b, 0.13 * a, 0.16 * b) < 1.0 + 0.3 * sec.organ_noise
        if 0.06 <= s <= 0.32:  # sigmoid loop, low image-right
            m |= self._ellipse(0.3 * a, 0.18 * b, 0.13 * a, 0.13 * b, 3.0 * s) < 1.0 + 0.3 * sec.organ_noise
        m &= sec.cavity
        if stomach is not None:  # organs touch; labels overlap only along the shared border
            m &= ~_erode(stomach, 2)
        return self._ensure(m, 0.6 * a, 0.0)

    def _small_bowel(self, sec: _Section, large: np.ndarray | None, stomach: np.ndarray | None) -> np.ndarray | None:
        """Small bowel mask: convoluted loops filling the middle of the abdomen; ``None`` outside its range.

        Also paints the bowel wall and mesentery between the loops.
        """
        s = self._position("small_bowel", sec.z)
        if s is None:
            return None
        a, b, j = sec.a, sec.b, self.jit
        e = _envelope(s)
        x0, y0 = (-0.05 + j[0]) * a, (0.06 + j[1]) * b
        region = (self._ellipse(x0, y0, 0.58 * a * e, 0.56 * b * e) < 1) & sec.cavity
        loops = np.abs(self.f_loops(sec.z))
        m = region & (loops < 0.34)
        for other in (large, stomach):
            if other is not None:
                m &= ~_erode(other, 2)
        small = self._ensure(m, x0, y0)
        sec.paint(region & (np.abs(loops - 0.4) < 0.06) & ~small, 0.3, 0.05)  # bowel wall and mesentery
        return small

    def _paint_labelled_organs(
        self,
        sec: _Section,
        small: np.ndarray | None,
        large: np.ndarray | None,
        stomach: np.ndarray | None,
        air_line: float | None,
    ) -> np.ndarray:
        """Paint small bowel, large bowel, stomach (where labels overlap the later organ shows); return the masks."""
        masks = np.zeros((*sec.rho.shape, 3), dtype=bool)
        if small is not None:
            masks[..., _SMALL_BOWEL] = small
            sec.paint(small, 0.58, 0.2)
        if large is not None:
            masks[..., _LARGE_BOWEL] = large
            sec.paint(large, 0.38, 0.35)
        if stomach is not None:
            masks[..., _STOMACH] = stomach
            sec.paint(stomach, 0.62, 0.12)
            if air_line is not None:
                sec.img[stomach & (self.y_mm < air_line)] = 0.04
        return masks

    # -- acquisition ---------------------------------------------------------------------------------------------

    def _acquire(self, sec: _Section) -> np.ndarray:
        """The scanner's view of the painted slice: bias field, partial-volume blur, gain, Rician noise; ``uint16``."""
        from scipy.ndimage import gaussian_filter

        gain = self.spec.gain
        bias = np.exp(0.22 * self.f_bias(sec.z)) * (1.0 + 0.12 * np.abs(sec.v).clip(0, 1.2))
        img = gaussian_filter(sec.img * bias, self.blur) * gain
        sigma = self.noise_sigma * gain
        n = self.rng.standard_normal((2, *img.shape), dtype=np.float32) * sigma
        img = np.sqrt((img + n[0]) ** 2 + n[1] ** 2)
        return np.clip(np.rint(img), 0, _UINT16_MAX).astype(np.uint16)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run the many small matrix products single-threaded.

    A multi-threaded BLAS spends more time synchronising than computing on these sizes (see ``docs/data.md``).
    ``threadpoolctl`` (installed with scikit-learn) is used when available.
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
        spec: the scan (from :func:`kvmonai.data.synth.plan_dataset`).

    Yields:
        ``(image, masks)``: ``uint16`` (H, W) and ``bool`` (H, W, 3) in ``kvmonai.data.CLASSES`` order.
    """
    renderer = _ScanRenderer(spec)
    for z in range(spec.depth):
        with _single_threaded_blas():
            out = renderer.slice(z)
        yield out


def generate_scan(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render one whole scan in memory.

    Args:
        spec: the scan (from :func:`kvmonai.data.synth.plan_dataset`).

    Returns:
        the ``uint16`` image ``(H, W, D)`` and the ``uint8`` multi-label mask ``(H, W, D, 3)``.
    """
    image = np.empty((spec.height, spec.width, spec.depth), dtype=np.uint16)
    label = np.empty((spec.height, spec.width, spec.depth, 3), dtype=np.uint8)
    for z, (img, m) in enumerate(iter_scan_slices(spec)):
        image[..., z] = img
        label[:, :, z, :] = m
    return image, label
