"""Run-length codec: row-major 1-based convention, exact round trips, and rejection of malformed strings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvmonai.data.rle import RLEError, parse_rle, rle_decode, rle_encode, rle_end


def test_row_major_one_based_by_hand():
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[0, 1] = 1  # flat index 1 -> start 2
    mask[1, 0] = 1  # flat index 4 -> start 5 (row-major: the next row, not the next column)
    mask[2, 1:4] = 1  # flat 9..11 -> start 10, length 3
    assert rle_encode(mask) == "2 1 5 1 10 3"
    np.testing.assert_array_equal(rle_decode("2 1 5 1 10 3", (3, 4)), mask)


def test_non_square_360x310_round_trip():
    rng = np.random.default_rng(1)
    mask = rng.random((310, 360)) > 0.7
    mask[0, 0] = mask[-1, -1] = True  # runs touching the first and last pixel
    rle = rle_encode(mask)
    out = rle_decode(rle, (310, 360))
    assert out.shape == (310, 360) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    assert rle_end(parse_rle(rle)) == 310 * 360
    # decoding with swapped width/height gives a different mask: the order matters
    assert not np.array_equal(rle_decode(rle, (360, 310)).reshape(310, 360), mask.T)


@pytest.mark.parametrize("fill", ["empty", "full"])
def test_empty_and_full(fill):
    mask = np.zeros((5, 7), bool) if fill == "empty" else np.ones((5, 7), bool)
    rle = rle_encode(mask)
    assert rle == ("" if fill == "empty" else "1 35")
    np.testing.assert_array_equal(rle_decode(rle, (5, 7)), mask)


@pytest.mark.parametrize("missing", ["", "   ", None, float("nan")])
def test_missing_segmentation_is_an_empty_mask(missing):
    assert not rle_decode(missing, (4, 6)).any()


def test_real_liver_segmentation_round_trip():
    """A real organ shape: the liver mask of pydicom's DICOM-SEG example, also cropped to a 310x360 window."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    liver = pydicom.dcmread(get_testdata_file("liver_1frame.dcm", download=False)).pixel_array.astype(bool)
    assert liver.shape == (512, 512) and liver.sum() > 30000
    np.testing.assert_array_equal(rle_decode(rle_encode(liver), liver.shape), liver)
    ys, xs = np.nonzero(liver)
    y0 = int(np.clip(ys.mean() - 155, 0, 512 - 310))
    x0 = int(np.clip(xs.mean() - 180, 0, 512 - 360))
    crop = liver[y0 : y0 + 310, x0 : x0 + 360]
    assert crop.shape == (310, 360) and crop.any()
    np.testing.assert_array_equal(rle_decode(rle_encode(crop), (310, 360)), crop)


@pytest.mark.parametrize(
    ("rle", "words"),
    [
        ("1 2 5", "odd number of tokens"),
        ("1 2 5 x", "'x' is not an integer"),
        ("1 2.5", "'2.5' is not an integer"),
        ("0 3", "1-based"),
        ("-4 3", "1-based"),
        ("3 0", "length 0"),
        ("10 2 3 2", "not sorted"),
        ("1 5 3 2", "overlap"),
        ("12 2", "past"),
        ("1 99999999999999999999999", "far larger than any image"),  # would overflow int64
        ("9223372036854775807 2", "far larger than any image"),  # would wrap when the run's end is computed
    ],
)
def test_malformed_rle_is_rejected_with_its_source(rle, words):
    with pytest.raises(RLEError, match="train.csv line 9") as err:
        rle_decode(rle, (3, 4), source="train.csv line 9")
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_touching_runs_are_allowed():
    np.testing.assert_array_equal(rle_decode("1 2 3 2", (1, 4)), np.ones((1, 4), np.uint8))


def test_encode_rejects_bad_masks():
    with pytest.raises(ValueError, match="2D"):
        rle_encode(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="binary"):
        rle_encode(np.array([[0.0, 0.4]]))
    assert rle_encode(np.array([[0, 1]], dtype=np.int64)) == "2 1"


def test_decode_rejects_bad_shape():
    with pytest.raises(ValueError, match="two positive integers"):
        rle_decode("1 1", (0, 3))


def test_parse_returns_pairs():
    pairs = parse_rle(" 3 2  9 1 ")
    assert pairs.tolist() == [[3, 2], [9, 1]]
    assert rle_end(pairs) == 9 and rle_end(parse_rle("")) == 0
    assert math.isclose(len(parse_rle(float("nan"))), 0)
