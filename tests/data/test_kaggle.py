"""The Kaggle layout reader: file names, csv, PNG pixels, cross-checks, and an error for every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kvmonai.data import kaggle


def write_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def test_file_name_is_width_then_height():
    info = kaggle.parse_slice_filename("train/case11/case11_day0/scans/slice_0001_360_310_1.50_1.50.png")
    assert (info.index, info.width, info.height) == (1, 360, 310)
    assert info.shape == (310, 360)
    assert (info.pixel_width, info.pixel_height) == (1.5, 1.5)
    assert kaggle.format_slice_filename(1, 360, 310, 1.5, 1.5) == "slice_0001_360_310_1.50_1.50.png"
    assert kaggle.parse_slice_filename("slice_0080_276_276_1.63_1.63.png").pixel_width == 1.63


@pytest.mark.parametrize("name", ["slice_1_266_266_1.50_1.50.png", "slice_0001_266_266.png", "img_0001.png"])
def test_bad_file_name(name):
    with pytest.raises(kaggle.KaggleFormatError, match="slice_SSSS_W_H_PW_PH"):
        kaggle.parse_slice_filename(name)


def test_slice_id():
    assert kaggle.parse_slice_id("case123_day20_slice_0001") == (123, 20, 1)
    with pytest.raises(kaggle.KaggleFormatError, match="line 4"):
        kaggle.parse_slice_id("case123_slice_0001", source="train.csv line 4")


def test_synthetic_set_reads_back(synth_root):
    ds = kaggle.KaggleDataset(synth_root)
    assert len(ds) == 6 and len(ds.labels) == 6 * 8
    sizes = {(s.shape[1], s.shape[0]) for s in ds.scans}
    assert sizes == {(266, 266), (360, 310), (276, 276), (234, 234)}
    wide = next(s for s in ds.scans if s.shape[:2] == (310, 360))
    assert wide.slices[0].path.name.startswith("slice_0001_360_310_")
    image, label = ds.load_image(wide), ds.load_label(wide)
    assert image.shape == (310, 360, 8) and image.dtype == np.uint16
    assert label.shape == (310, 360, 8, 3) and label.dtype == np.uint8
    key = wide.slice_ids()[4]
    mask = ds.labels.mask(key, (310, 360))
    assert mask.shape == (310, 360, 3)  # a 360x310 slice decodes to a (310, 360) mask
    np.testing.assert_array_equal(label[:, :, 4], mask)
    np.testing.assert_array_equal(image[..., 0], np.asarray(Image.open(wide.slices[0].path)))
    assert ds.slice_presence(wide).shape == (8, 3)


def test_real_mr_slice_as_16bit_png(tmp_path):
    """Real MR pixels (pydicom's MR_small.dcm) rescaled to uint16, padded to 266x266, survive a PNG round trip."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False)).pixel_array.astype(np.float64)
    img = np.zeros((266, 266), dtype=np.uint16)
    img[101:165, 101:165] = np.round((mr - mr.min()) / (mr.max() - mr.min()) * 15000).astype(np.uint16)
    path = tmp_path / kaggle.format_slice_filename(1, 266, 266, 1.5, 1.5)
    write_png(path, img)
    out = kaggle.read_slice_png(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def _rewrite_csv(root: Path, edit) -> None:
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(edit(lines)) + "\n")


def test_csv_id_without_png(tiny_kaggle):
    root = tiny_kaggle()
    png = sorted((root / "train/case7/case7_day3/scans").glob("slice_0003_*.png"))[0]
    png.unlink()
    with pytest.raises(kaggle.KaggleFormatError, match=r"line 8 id case7_day3_slice_0003 .*no PNG|have no PNG") as err:
        kaggle.KaggleDataset(root)
    assert "slice_0003" in str(err.value) and "Restore the images or delete" in str(err.value)


def test_png_without_csv_rows(tiny_kaggle):
    root = tiny_kaggle()
    _rewrite_csv(root, lambda lines: [ln for ln in lines if "slice_0002" not in ln])
    with pytest.raises(kaggle.KaggleFormatError, match="no rows in") as err:
        kaggle.KaggleDataset(root)
    assert "slice_0002_12_10_1.50_1.50.png" in str(err.value)


def test_unknown_class(tiny_kaggle):
    root = tiny_kaggle()
    _rewrite_csv(root, lambda lines: [*lines[:3], lines[3].replace("stomach", "liver"), *lines[4:]])
    with pytest.raises(kaggle.KaggleFormatError, match=r"line 4: unknown class 'liver'"):
        kaggle.read_train_csv(root / "train.csv")


def test_duplicate_rows(tiny_kaggle):
    root = tiny_kaggle()
    _rewrite_csv(root, lambda lines: [*lines, lines[2]])
    with pytest.raises(kaggle.KaggleFormatError, match=r"line 11: duplicate row .* \(first at line 3\)"):
        kaggle.read_train_csv(root / "train.csv")


def test_missing_class_row_and_bad_header(tiny_kaggle):
    root = tiny_kaggle()
    _rewrite_csv(root, lambda lines: [ln for ln in lines if not ln.startswith("case7_day3_slice_0001,small_bowel")])
    with pytest.raises(kaggle.KaggleFormatError, match="has no row for small_bowel"):
        kaggle.read_train_csv(root / "train.csv")
    _rewrite_csv(root, lambda lines: ["id,label,rle", *lines[1:]])
    with pytest.raises(kaggle.KaggleFormatError, match="line 1: header"):
        kaggle.read_train_csv(root / "train.csv")


@pytest.mark.parametrize(
    ("rle", "words"),
    [
        ("1 2 3", "odd number"),
        ("a b", "not an integer"),
        ("0 2", "1-based"),
        ("5 2 1 1", "not sorted"),
        ("1 4 2 1", "overlap"),
    ],
)
def test_malformed_rle_in_csv_names_the_line(tiny_kaggle, rle, words):
    root = tiny_kaggle()
    _rewrite_csv(root, lambda lines: [lines[0], lines[1] + rle, *lines[2:]])  # line 2 had an empty segmentation
    with pytest.raises(kaggle.KaggleFormatError, match=rf"train.csv line 2: .*{words}"):
        kaggle.KaggleDataset(root)


def test_rle_past_the_image_names_line_and_png(tiny_kaggle):
    root = tiny_kaggle()  # 12 x 10 = 120 pixels
    _rewrite_csv(root, lambda lines: [*lines[:2], lines[2].split(",")[0] + ",small_bowel,118 5", *lines[3:]])
    match = r"line 3: small_bowel runs end at pixel 122 .*slice_0001_12_10"
    with pytest.raises(kaggle.KaggleFormatError, match=match) as err:
        kaggle.KaggleDataset(root)
    assert "swapped" in str(err.value)


def test_png_size_disagreeing_with_its_name(tiny_kaggle):
    root = tiny_kaggle()
    png = sorted((root / "train/case7/case7_day3/scans").glob("slice_0002_*.png"))[0]
    write_png(png, np.zeros((12, 10), dtype=np.uint16))  # W and H swapped
    ds = kaggle.KaggleDataset(root)  # names are consistent; the pixels are checked when read
    match = r"slice_0002_12_10_1.50_1.50.png: image is 10x12 \(W x H\) but 12x10"
    with pytest.raises(kaggle.KaggleFormatError, match=match):
        ds.load_image(ds.scans[0])


@pytest.mark.parametrize(
    ("kind", "words"),
    [("8bit", "8-bit"), ("rgb", "colour or alpha"), ("truncated", "truncated or corrupt"), ("jpeg", "not a PNG")],
)
def test_bad_png_pixels(tmp_path, kind, words):
    path = tmp_path / "slice_0001_12_10_1.50_1.50.png"
    if kind == "8bit":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)
    elif kind == "rgb":
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(path)
    elif kind == "truncated":
        write_png(path, np.random.default_rng(0).integers(0, 60000, (10, 12), dtype=np.uint16))
        path.write_bytes(path.read_bytes()[:60])
    else:
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(path, format="JPEG")
    with pytest.raises(kaggle.KaggleFormatError, match=words) as err:
        kaggle.read_slice_png(path)
    assert str(path) in str(err.value)


def test_folder_structure_errors(tiny_kaggle):
    root = tiny_kaggle()
    scans = root / "train/case7/case7_day3/scans"
    shutil.copy(next(scans.glob("slice_0003_*")), scans / "slice_0005_12_10_1.50_1.50.png")
    with pytest.raises(kaggle.KaggleFormatError, match="missing 0004"):
        kaggle.find_scans(root)
    (scans / "slice_0005_12_10_1.50_1.50.png").rename(scans / "slice_0004_14_10_1.50_1.50.png")
    with pytest.raises(kaggle.KaggleFormatError, match="all slices of a scan must share one geometry"):
        kaggle.find_scans(root)
    (scans / "slice_0004_14_10_1.50_1.50.png").unlink()
    (root / "train/case7/case8_day1").mkdir()
    with pytest.raises(kaggle.KaggleFormatError, match="expected only 'case7_dayD' folders"):
        kaggle.find_scans(root)
    with pytest.raises(kaggle.KaggleFormatError, match="folder not found"):
        kaggle.find_scans(root / "nowhere")


def test_classes_order():
    assert kaggle.CLASSES == ("large_bowel", "small_bowel", "stomach")
