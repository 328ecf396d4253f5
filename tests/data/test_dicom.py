"""DICOM in, DICOM SEG out: series checks, geometry round trips (axial, oblique, pydicom's real MR) and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from kvmonai.data.dicom_series import rotation, write_dicom_series
from kvmonai.data.prepare import ORIENTATION, kaggle_affine
from kvmonai.portable.dicom import DicomInputError, find_series
from kvmonai.portable.dicom_seg import SEGMENT_CODES, SaveDicomSegd, mask_on_source_grid
from kvmonai.portable.volume import CANONICAL_AXCODES, load_nifti_or_dicom

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")  # ITK's SWIG bindings
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
from pydicom.data import get_testdata_file  # noqa: E402

LABELS = ["large_bowel", "small_bowel", "stomach"]
#: thresholds that turn a volume into three overlapping "organs" whose truth is known on every source pixel
THRESHOLDS = (300, 500, 700)


def _volume(rows: int = 40, cols: int = 56, depth: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, size=(rows, cols, depth)).astype(np.float32)


def _seg_round_trip(folder: Path, out: Path, reader: str = "itk") -> tuple[np.ndarray, np.ndarray, object, list]:
    """Load ``folder``, threshold it into three overlapping masks, write the SEG, read it back per source image.

    Returns the SEG frames ``(n, rows, cols, 3)`` in source order, the truth from the source pixels, the SEG dataset
    and the source datasets.
    """
    img = load_nifti_or_dicom(folder, dicom_reader=reader)
    mask = torch.cat([img > t for t in THRESHOLDS]).float()
    pred = MetaTensor(mask, affine=img.affine, meta=dict(img.meta))
    writer = SaveDicomSegd("pred", out, LABELS, "setr_kv", "0.1.0")
    writer({"pred": pred})
    seg = hd.seg.segread(writer.output_path(folder))
    sources = find_series(folder).datasets(pixels=True)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], segment_numbers=[1, 2, 3], combine_segments=False
    )
    truth = np.stack([np.stack([s.pixel_array > t for t in THRESHOLDS], -1) for s in sources])
    return frames.astype(bool), truth, seg, sources


@pytest.mark.parametrize(
    "tilt", [None, rotation(20, (1, 1, 0)), rotation(90, (0, 0, 1))], ids=["axial", "oblique", "rotated90"]
)
def test_seg_matches_source_pixels(tmp_path, tilt):
    """Non-square 1.5 x 1.5 x 3 mm slices, axial and tilted: every SEG pixel is the organ of that source pixel."""
    info = write_dicom_series(_volume(), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / "series", tilt=tilt)
    frames, truth, seg, sources = _seg_round_trip(info.folder, tmp_path / "out")
    assert frames.shape == truth.shape == (6, 40, 56, 3)
    np.testing.assert_array_equal(frames, truth)
    assert (truth[..., 0] & truth[..., 1]).any()  # the organs overlap, and BINARY kept it
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == info.frame_of_reference_uid and seg.StudyInstanceUID == info.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.series_uid
    referenced = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced == {s.SOPInstanceUID for s in sources}


def test_seg_segments_are_coded_and_name_the_algorithm(tmp_path):
    info = write_dicom_series(_volume(), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / "series")
    _, _, seg, _ = _seg_round_trip(info.folder, tmp_path / "out")
    segments = list(seg.SegmentSequence)
    assert [s.SegmentLabel for s in segments] == [SEGMENT_CODES[k][0] for k in LABELS]
    assert [(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in segments] == [
        "14742008",
        "30315005",
        "69695003",
    ]
    for s in segments:
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("setr_kv", "0.1.0")


def test_seg_on_pydicom_real_mr(tmp_path, mr_series):
    """pydicom's real MR_small.dcm: as one file, and as a four-slice series at 0.8 mm steps."""
    path = Path(get_testdata_file("MR_small.dcm", download=False))
    frames, truth, _, _ = _seg_round_trip(path, tmp_path / "one")
    assert frames.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(frames, truth)

    folder, _ = mr_series
    frames, truth, _, _ = _seg_round_trip(folder, tmp_path / "four")
    assert frames.shape == (4, 64, 64, 3) and truth.any()
    np.testing.assert_array_equal(frames, truth)


def test_canonical_orientation_is_the_prepared_one():
    assert "".join(ORIENTATION) == CANONICAL_AXCODES


def test_pydicom_reader_wrong_geometry_is_refused(tmp_path):
    """MONAI's PydicomReader gives an identity affine for this oblique series; the loader refuses it."""
    info = write_dicom_series(_volume(), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / "s", tilt=rotation(20, (1, 1, 0)))
    with pytest.raises(DicomInputError, match="does not match the headers.*dicom_reader 'itk'"):
        load_nifti_or_dicom(info.folder, dicom_reader="pydicom")
    assert tuple(load_nifti_or_dicom(info.folder, dicom_reader="itk").shape) == (1, 40, 56, 6)


def test_mask_off_the_grid_is_refused(tmp_path):
    info = write_dicom_series(_volume(), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / "s")
    datasets = find_series(info.folder).datasets()
    mask = np.ones((3, 40, 56, 6), bool)
    half = kaggle_affine((0.75, 0.75, 3.0))  # a finer grid whose 10 x 10 voxels cover a corner of the series only
    shifted = kaggle_affine((1.5, 1.5, 3.0)).copy()
    shifted[:3, 3] += 0.5  # half a millimetre off: source pixels lie between voxel centres
    with pytest.raises(ValueError, match="off the mask's grid"):
        mask_on_source_grid(mask, shifted, datasets)
    with pytest.raises(ValueError, match="outside the mask"):
        mask_on_source_grid(np.ones((3, 10, 10, 6), bool), half, datasets)


# ----------------------------------------------------------------------------------------------- bad DICOM input


def _series(tmp_path: Path, name: str, **kwargs) -> Path:
    return write_dicom_series(_volume(**kwargs), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / name).folder


def test_two_series_are_listed_and_one_can_be_chosen(tmp_path):
    a = _series(tmp_path, "a")
    b = write_dicom_series(
        _volume(depth=4), kaggle_affine((1.5, 1.5, 3.0)), tmp_path / "b", series_number=7, series_description="T2"
    )
    for f in b.files:
        shutil.copy(f, a / f"b_{f.name}")
    with pytest.raises(
        DicomInputError, match=r"(?s)holds 2 image series.*series 1 'synthetic abdominal MR'.*series 7 'T2'"
    ):
        load_nifti_or_dicom(a)
    assert load_nifti_or_dicom(a, series=b.series_uid).shape[-1] == 4
    assert load_nifti_or_dicom(a, series="7").shape[-1] == 4
    assert load_nifti_or_dicom(a, series=1).shape[-1] == 6
    with pytest.raises(DicomInputError, match="'9': no such SeriesInstanceUID or SeriesNumber"):
        load_nifti_or_dicom(a, series=9)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_position", "missing geometry tag.*ImagePositionPatient"),
        ("missing_spacing", "missing geometry tag.*PixelSpacing"),
        ("mixed_size", "mixed image sizes.*30x56"),
        ("gap", "not evenly spaced.*6.000 mm.*3.000 mm.*missing slice"),
        ("duplicate", "same position"),
        ("tilted_slice", "not one volume"),
        ("not_dicom", "not a readable DICOM file"),
    ],
)
def test_irregular_series_is_refused_by_name(tmp_path, damage, message):
    folder = _series(tmp_path, "series")
    third = folder / "IM0003.dcm"
    ds = pydicom.dcmread(third)
    if damage == "missing_position":
        del ds.ImagePositionPatient
    elif damage == "missing_spacing":
        del ds.PixelSpacing
    elif damage == "mixed_size":
        ds.Rows = 30
        ds.PixelData = ds.pixel_array[:30].tobytes()
    elif damage == "gap":
        third.unlink()
    elif damage == "duplicate":
        ds.ImagePositionPatient = pydicom.dcmread(folder / "IM0002.dcm").ImagePositionPatient
    elif damage == "tilted_slice":
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43588989]
    elif damage == "not_dicom":
        third.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    if third.exists() and damage != "not_dicom":
        ds.save_as(third)
    with pytest.raises(DicomInputError, match=message) as err:
        load_nifti_or_dicom(folder)
    assert str(folder) in str(err.value)


def test_seg_always_refuses_nifti_input(tmp_path):
    pred = MetaTensor(torch.ones(3, 4, 4, 2), affine=torch.eye(4), meta={"filename_or_obj": "case.nii.gz"})
    with pytest.raises(DicomInputError, match="case.nii.gz: dicom_seg 'always' needs a DICOM input"):
        SaveDicomSegd("pred", tmp_path, LABELS, "b", "1", mode="always")({"pred": pred})
    SaveDicomSegd("pred", tmp_path, LABELS, "b", "1", mode="auto")({"pred": pred})  # nothing to do
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="dicom_seg must be one of"):
        SaveDicomSegd("pred", tmp_path, LABELS, "b", "1", mode="yes")
    with pytest.raises(ValueError, match=r"labels \['liver'\] have no SNOMED CT code"):
        SaveDicomSegd("pred", tmp_path, ["liver"], "b", "1")
