"""Inference inputs (NIfTI, DICOM series, PNG folders) load through MONAI readers into one (1, H, W, D) PLS form."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from kvmonai.data.io import LoadVolumed, load_volume
from kvmonai.data.kaggle import KaggleDataset, KaggleFormatError
from kvmonai.data.prepare import kaggle_affine

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")  # ITK's SWIG bindings

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


@pytest.mark.parametrize("reader", ["itk", "pydicom"])
def test_dicom_series(mr_series, reader):
    folder, pixels = mr_series
    vol = load_volume(folder, dicom_reader=reader)
    assert tuple(vol.shape) == (1, 64, 64, 4) and vol.dtype == torch.float32
    assert [float(vol[0, 0, 0, z]) for z in range(4)] == [0, 10, 20, 30]  # sorted by position, inferior first
    np.testing.assert_array_equal(vol[0, 1:, 1:, 2].numpy(), pixels[1:, 1:])  # rows x columns as displayed
    assert nib.aff2axcodes(vol.affine.numpy()) == ("P", "L", "S")
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3].numpy(), axis=0), [0.3125, 0.3125, 0.8], rtol=1e-4)


def test_single_dicom_file_in_hounsfield_units():
    from pydicom.pixels import apply_modality_lut

    ct = get_testdata_file("CT_small.dcm", download=False)
    ds = pydicom.dcmread(ct)
    vol = load_volume(ct)
    assert tuple(vol.shape) == (1, 128, 128, 1)
    # the reader applies RescaleSlope/Intercept, as pydicom's modality LUT does
    np.testing.assert_array_equal(vol[0, ..., 0].numpy(), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_nifti_is_reoriented_to_pls(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # RAS: x (left->right), y (post->ant), z
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    vol = load_volume(path)
    assert tuple(vol.shape) == (1, 5, 4, 3)
    # PLS: rows run posterior (y decreasing), columns to patient left (x decreasing)
    np.testing.assert_array_equal(vol[0].numpy(), data[::-1, ::-1, :].transpose(1, 0, 2))
    assert nib.aff2axcodes(vol.affine.numpy()) == ("P", "L", "S")


def test_prepared_nifti_png_folder_and_monai_agree(synth_root, prepared_root):
    ds = KaggleDataset(synth_root)
    scan = next(s for s in ds.scans if s.shape[:2] == (310, 360))
    nifti = load_volume(prepared_root / "imagesTr" / f"{scan.id}.nii.gz")
    pngs = load_volume(scan.directory)
    expected = ds.load_image(scan).astype(np.float32)
    assert tuple(nifti.shape) == tuple(pngs.shape) == (1, 310, 360, scan.depth)
    np.testing.assert_array_equal(nifti[0].numpy(), expected)
    np.testing.assert_array_equal(pngs[0].numpy(), expected)
    np.testing.assert_allclose(pngs.affine.numpy(), kaggle_affine(scan.spacing))
    np.testing.assert_allclose(nifti.affine.numpy(), pngs.affine.numpy())
    out = LoadVolumed("image")({"image": str(scan.directory)})
    torch.testing.assert_close(out["image"].as_tensor(), pngs.as_tensor())


def test_kaggle_png_folder_with_a_missing_slice_is_refused(synth_root, tmp_path):
    """As prepare refuses it (reliability finding 8): the slices would be stacked 3 mm too close."""
    import shutil

    scan = KaggleDataset(synth_root).scans[0]
    folder = tmp_path / "scans"
    shutil.copytree(scan.directory, folder)
    sorted(folder.glob("*.png"))[2].unlink()
    with pytest.raises(KaggleFormatError, match=r"slice numbers jump from 2 to 4 \(a missing slice\?\)"):
        load_volume(folder)


def test_generic_png_folder(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in (1, 2, 10):  # natural order: 1, 2, 10
        Image.fromarray(np.full((6, 8), i, dtype=np.uint8)).save(folder / f"img{i}.png")
    vol = load_volume(folder, spacing=(0.8, 0.8, 2.5))
    assert tuple(vol.shape) == (1, 6, 8, 3)
    assert [float(vol[0, 0, 0, z]) for z in range(3)] == [1, 2, 10]
    np.testing.assert_allclose(np.abs(vol.affine.numpy()).sum(0)[:3], [0.8, 0.8, 2.5])
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(folder / "img11.png")
    with pytest.raises(ValueError, match="img11.png: shape"):
        load_volume(folder)


def test_kaggle_png_folder_is_validated(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "slice_0001_12_10_1.50_1.50.png")
    with pytest.raises(KaggleFormatError, match="8-bit"):
        load_volume(folder)


def test_nan_filled_nifti_is_rejected(tmp_path):
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), np.nan, dtype=np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match=r"nan.nii.gz: 32 of 32 voxels are NaN or infinite; fix the file"):
        load_volume(path)


def test_unusable_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a NIfTI"):
        load_volume(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="neither PNG slices nor DICOM"):
        load_volume(tmp_path)
    with pytest.raises(ValueError, match="dicom_reader"):
        load_volume(tmp_path, dicom_reader="gdcm")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="broken.nii.gz: NibabelReader could not read"):
        load_volume(tmp_path / "broken.nii.gz")
