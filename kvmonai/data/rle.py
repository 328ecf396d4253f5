"""Run-length encoding of binary masks in the UW-Madison GI Tract ``train.csv`` convention.

The convention (see ``docs/data.md``):

* the mask is an (H, W) array, flattened in **row-major** (C) order, i.e. pixel ``k`` (0-based) is
  ``mask[k // W, k % W]``;
* the string holds space-separated ``start length`` pairs, starts are **1-based**, lengths positive;
* pairs are sorted by start and never overlap;
* an empty string (or a missing value) means "organ absent".

Every malformed string is rejected with :class:`RLEError`, a :class:`ValueError` whose message names where the
string came from (``source``) and what to do about it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from kvmonai.utils import KVMonaiError

__all__ = ["RLEError", "parse_rle", "rle_decode", "rle_encode", "rle_end"]


_INTEGER = re.compile(r"-?[0-9]+")
_INTEGERS = re.compile(r"\s*-?[0-9]+(?:\s+-?[0-9]+)*\s*")


class RLEError(KVMonaiError, ValueError):
    """A run-length encoded string is malformed or does not fit the image it belongs to."""


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _is_missing(rle: object) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def parse_rle(rle: str | float | None, num_pixels: int | None = None, source: str | None = None) -> np.ndarray:
    """Parse and validate a run-length encoded string.

    Args:
        rle: ``"start length start length ..."`` with 1-based starts; ``""``, ``None`` or NaN (how pandas reads an
            empty csv field) mean an empty mask.
        num_pixels: number of pixels of the image (H * W). When given, runs that end past the image are rejected.
        source: where the string came from (e.g. ``"train.csv line 12"``), used in error messages.

    Returns:
        an ``(N, 2)`` int64 array of ``(start, length)`` pairs, starts 1-based (``N`` may be 0).

    Raises:
        RLEError: odd token count, a token that is not a non-negative integer or above 10^15, a start below 1, a
            length below 1, unsorted or overlapping runs, or (with ``num_pixels``) a run past the last pixel.
    """
    where = _where(source)
    if _is_missing(rle):
        return np.zeros((0, 2), dtype=np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"{where}segmentation must be a string of 'start length' pairs, got {type(rle).__name__}.")
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(
            f"{where}RLE has an odd number of tokens ({len(tokens)}); it must be 'start length' pairs. "
            "Check that the field was not cut off."
        )
    if not _INTEGERS.fullmatch(rle):
        tok = next(t for t in tokens if not _INTEGER.fullmatch(t))
        raise RLEError(
            f"{where}RLE token {tok!r} is not an integer; starts and lengths must be whole numbers written in "
            "decimal digits (0-9)."
        )
    huge = next((t for t in tokens if len(t.lstrip("0")) > 15), None)  # > 10**15: no image has that many pixels
    if huge is not None:
        raise RLEError(
            f"{where}RLE number {huge[:20]}{'...' if len(huge) > 20 else ''} is far larger than any image "
            "(more than 10^15 pixels); the field is corrupted."
        )
    pairs = np.asarray(tokens, dtype=np.int64).reshape(-1, 2)
    starts, lengths = pairs[:, 0], pairs[:, 1]
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise RLEError(
            f"{where}RLE run {bad[0] + 1} starts at {starts[bad[0]]}; starts are 1-based and must be >= 1 "
            "(a 0-based encoder was probably used: add 1 to every start)."
        )
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise RLEError(f"{where}RLE run {bad[0] + 1} has length {lengths[bad[0]]}; lengths must be >= 1.")
    if len(starts) > 1:
        bad = np.flatnonzero(np.diff(starts) <= 0)
        if bad.size:
            i = bad[0] + 1
            raise RLEError(
                f"{where}RLE runs are not sorted: run {i + 1} starts at {starts[i]} after run {i} at {starts[i - 1]}; "
                "sort the pairs by start."
            )
        ends = starts + lengths  # 1-based exclusive end
        bad = np.flatnonzero(starts[1:] < ends[:-1])
        if bad.size:
            i = bad[0] + 1
            raise RLEError(
                f"{where}RLE runs overlap: run {i + 1} starts at {starts[i]} but run {i} covers pixels "
                f"{starts[i - 1]}..{ends[i - 1] - 1}; merge or fix the runs."
            )
    if num_pixels is not None and len(starts):
        last = int(starts[-1] + lengths[-1] - 1)
        if last > num_pixels:
            raise RLEError(
                f"{where}RLE run ends at pixel {last}, past the image's {num_pixels} pixels; the mask belongs to a "
                "larger image or width and height were swapped."
            )
    return pairs


def rle_end(pairs: np.ndarray) -> int:
    """Return the last (1-based) pixel covered by parsed runs, 0 for an empty mask.

    Args:
        pairs: the ``(N, 2)`` output of :func:`parse_rle`.

    Returns:
        the 1-based index of the last foreground pixel, or 0.
    """
    if len(pairs) == 0:
        return 0
    return int(pairs[-1, 0] + pairs[-1, 1] - 1)


def rle_decode(rle: str | float | None | np.ndarray, shape: Sequence[int], source: str | None = None) -> np.ndarray:
    """Decode a run-length encoded string into a binary (H, W) mask.

    Args:
        rle: the encoded string (see :func:`parse_rle`), or already parsed ``(N, 2)`` pairs.
        shape: the image shape ``(H, W)``; for a file named ``slice_*_360_310_*`` this is ``(310, 360)``.
        source: where the string came from, used in error messages.

    Returns:
        a ``uint8`` array of shape ``(H, W)`` with values 0 and 1.

    Raises:
        RLEError: when the string is malformed or runs past the image.
        ValueError: when ``shape`` is not two positive integers.
    """
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be two positive integers (H, W), got {tuple(shape)}.")
    h, w = (int(s) for s in shape)
    n = h * w
    if isinstance(rle, np.ndarray):
        pairs = rle
        if len(pairs) and rle_end(pairs) > n:
            raise RLEError(f"{_where(source)}RLE run ends at pixel {rle_end(pairs)} past the {n} pixels of {h}x{w}.")
    else:
        pairs = parse_rle(rle, num_pixels=n, source=source)
    # difference array: +1 where a run starts, -1 one past its end; runs never overlap, so the cumsum is 0 or 1
    marks = np.zeros(n + 1, dtype=np.int32)
    if len(pairs):
        np.add.at(marks, pairs[:, 0] - 1, 1)
        np.add.at(marks, pairs[:, 0] - 1 + pairs[:, 1], -1)
    return np.cumsum(marks[:n], dtype=np.int32).astype(np.uint8).reshape(h, w)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a binary (H, W) mask as a row-major, 1-based run-length string.

    Args:
        mask: a 2D array; ``bool`` or integers/floats holding only 0 and 1.

    Returns:
        the run-length string, ``""`` for an empty mask.

    Raises:
        ValueError: when ``mask`` is not 2D or holds values other than 0 and 1.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2D (H, W) array, got shape {arr.shape}.")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("mask must be binary (values 0 and 1); threshold probabilities before encoding.")
        arr = arr.astype(bool)
    flat = np.concatenate(([False], arr.ravel(order="C"), [False]))
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # 0-based positions where the value changes
    if edges.size == 0:
        return ""
    starts, stops = edges[0::2], edges[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts + 1
    runs[1::2] = stops - starts
    return " ".join(map(str, runs.tolist()))
