"""The annotation loop on a real PACS: Orthanc (DICOMweb) + MONAI Label with the kvmonai app, over HTTP.

A fresh Orthanc holds two synthetic MR studies, one tilted by 10 degrees (``pacs_loop`` in conftest.py). The tests
check what a PACS user relies on: only MR series are offered and only loopback clients are served; auto-segmentation
of a series fetched by UID comes back on that series' grid; a submitted label is stored in Orthanc as a DICOM SEG
with the right organs, codes, pixels and references (also when an organ is missing, which monailabel 0.8.5 alone
mislabels); and a second server with an empty cache fine-tunes on the SEG it reads back from the PACS.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk  # noqa: N813

from kvmonai.label.pacs import iter_series
from kvmonai.portable.dicom import find_series

pytestmark = pytest.mark.slow


def _seg_series(loop: Any) -> list[dict[str, str]]:
    return [s for s in iter_series(loop.orthanc.dicomweb_url) if s["Modality"] == "SEG"]


def _seg_dataset(loop: Any, seg: dict[str, str]) -> pydicom.Dataset:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=loop.orthanc.dicomweb_url)
    (ds,) = client.retrieve_series(seg["StudyInstanceUID"], seg["SeriesInstanceUID"])
    return ds


@pytest.fixture(scope="module")
def submitted(pacs_loop: Any, submit_truth) -> dict[str, Any]:
    """A final label for the tilted study with small bowel and stomach only, submitted as OHIF and Slicer do."""
    study = pacs_loop.studies[0]
    label = submit_truth(study, organs=(2, 3))
    assert set(np.unique(label).tolist()) == {0, 2, 3}
    return {"study": study, "label": label}


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it is not a loopback one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_pacs_offers_its_mr_series_to_loopback_clients_only(pacs_loop: Any):
    series = {s["SeriesInstanceUID"]: s for s in iter_series(pacs_loop.orthanc.dicomweb_url)}
    for study in pacs_loop.studies:
        assert series[study.series_uid]["Modality"] == "MR" and series[study.series_uid]["PatientID"] == study.case
    # MONAI Label lists the MR series (its own default filter is CT); SEGs stored later are labels, not studies
    stats = requests.get(f"{pacs_loop.server.url}/datastore/", params={"output": "stats"}, timeout=30).json()
    assert stats["total"] == 2
    # the viewer's DICOMweb proxy reaches the PACS
    qido = requests.get(f"{pacs_loop.server.url}/proxy/dicom/qido/studies", timeout=30)
    assert qido.status_code == 200 and len(qido.json()) == 2
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try the refusal from")
    # Orthanc 1.10 listens on every interface but serves 127.0.0.1 only; MONAI Label is bound to 127.0.0.1
    r = requests.get(f"http://{address}:{pacs_loop.orthanc.port}/system", timeout=10)
    assert r.status_code in (401, 403)
    port = int(pacs_loop.server.url.rsplit(":", 1)[1])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{address}:{port}/info/", timeout=10)


def test_auto_segmentation_of_a_pacs_series_lands_on_its_grid(pacs_loop: Any, infer_series, tmp_path: Path):
    study = pacs_loop.studies[0]  # the tilted one
    # as OHIF's MONAI Label panel asks: a raw uint8 NRRD
    params = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
    r = infer_series(pacs_loop, study.series_uid, {**params, "restore_label_idx": False})
    header = r.content[: r.content.index(b"\n\n")].decode()
    cached = next(pacs_loop.root.joinpath("cache").glob(f"*/{study.series_uid}"))
    series = find_series(cached)
    rows, cols = int(series.headers[0].Rows), int(series.headers[0].Columns)
    assert "type: unsigned char" in header and f"sizes: {cols} {rows} {len(series.files)}" in header
    assert "encoding: raw" in header
    voxels = np.frombuffer(r.content[r.content.index(b"\n\n") + 2 :], np.uint8)
    assert voxels.size == rows * cols * len(series.files) and set(np.unique(voxels).tolist()) <= {0, 1, 2, 3}

    (tmp_path / "label.nii.gz").write_bytes(infer_series(pacs_loop, study.series_uid, {}).content)
    label = nib.load(tmp_path / "label.nii.gz")
    assert label.shape == (cols, rows, len(series.files))
    # MONAI Label's NIfTI of the series has axes (column, row, slice); kvmonai's affine has (row, column, slice)
    np.testing.assert_allclose(label.affine[:, [1, 0, 2, 3]], series.affine(), atol=1e-3)


def test_a_submitted_label_is_stored_as_a_dicom_seg_of_the_right_organs(pacs_loop: Any, submitted: dict):
    study, label = submitted["study"], submitted["label"]
    segs = [s for s in _seg_series(pacs_loop) if s["StudyInstanceUID"] == study.study_uid]
    assert len(segs) == 1
    ds = _seg_dataset(pacs_loop, segs[0])
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    mr = find_series(next(pacs_loop.root.joinpath("cache").glob(f"*/{study.series_uid}")))
    assert ds.FrameOfReferenceUID == mr.headers[0].FrameOfReferenceUID and ds.PatientID == study.case
    # one segment per organ present, named and coded as the bundles' own SEG writer does (no large bowel here,
    # although the client listed it first)
    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [s.SegmentLabel for s in segments.values()] == ["Small bowel", "Stomach"]
    codes = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments.values()]
    assert codes == ["30315005", "69695003"]
    assert {s.SegmentAlgorithmType for s in segments.values()} == {"SEMIAUTOMATIC"}
    # every segment holds exactly the submitted organ's voxels
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    counted: dict[int, int] = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counted[number] = counted.get(number, 0) + int(frame.sum())
    assert counted == {1: int((label == 2).sum()), 2: int((label == 3).sum())}


def test_fine_tuning_reads_the_labels_back_from_the_pacs(
    pacs_loop: Any, submitted: dict, start_label_server, train_rest, tmp_path
):
    """A second server with an empty cache: the SEG is fetched, put on the image grid, mapped by organ, trained on."""
    study, label = submitted["study"], submitted["label"]
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache")}
    pacs, bundles = pacs_loop.orthanc.dicomweb_url, pacs_loop.server.bundles
    with start_label_server(pacs, bundles, ["setr_kv"], tmp_path, env) as srv:
        stats = train_rest(srv, {"max_epochs": 1, "mlflow": False})
    labelled = {seg["StudyInstanceUID"] for seg in _seg_series(pacs_loop)}  # the browser test may have added one
    held_out = 0 if stats["in_sample_validation"] else stats["val_studies"]
    assert stats["train_studies"] + held_out == len(labelled) and stats["epoch"] == 1
    (store,) = (tmp_path / "cache").glob("*/datastore_v2.json")
    entry = json.loads(store.read_text())["objects"][study.series_uid]["labels"]["final"]
    # the SEG's segment numbers, mapped to organs by their SNOMED codes
    assert entry["info"]["label_info"] == [{"name": "small_bowel", "idx": 1}, {"name": "stomach", "idx": 2}]
    fetched = next((tmp_path / "cache").glob(f"*/labels/final/{study.series_uid}{entry['ext']}"))
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(fetched))).transpose(2, 1, 0)  # to (column, row, slice)
    assert values.shape == label.shape  # resampled onto the image grid (the SEG holds only slices with organs)
    assert int((values == 1).sum()) == int((label == 2).sum()) and int((values == 2).sum()) == int((label == 3).sum())
