"""MONAI Label's DICOMweb datastore with organ-correct DICOM SEG in both directions.

monailabel 0.8.5's ``DICOMWebDatastore`` stores a final label as DICOM SEG (dcmqi ``itkimage2segimage``) and reads
SEGs back for training. Two of its steps lose the organ of a segment, which this subclass fixes:

* **Writing.** ``nifti_to_dicom_seg`` gives the ``i``-th value present in the label map the ``i``-th entry of the
  client's ``label_info``, whatever that entry's ``idx``. A label without large bowel (value 1) would store small
  bowel under the name *large_bowel*. Here ``label_info`` is rebuilt per value present, from the app's labels, with
  SNOMED CT property types from :data:`kvmonai.portable.dicom_seg.SEGMENT_CODES` (the codes the bundles' own SEG
  writer uses) instead of MONAI Label's one generic code for every segment.
* **Reading.** A SEG fetched from the PACS becomes a map of *segment numbers* (pydicom-seg), which are not the app's
  label values when a segment is missing or another tool wrote the SEG. Here each fetched label records which
  segment number holds which organ (by SNOMED code, else by segment label), as ``label_info``; the training task
  maps channels with it (:func:`kvmonai.label.datalist.label_values`). pydicom-seg also returns only the slices the
  SEG has frames for (dcmqi leaves out empty ones), so the label is resampled onto its image's grid here (nearest
  neighbour, by world coordinates).

It also answers ``get_label_uri(image_id, "final")`` with the local copy, as MONAI Label's local datastore does, so
that training code can address labels by image id on both datastores.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from kvmonai.utils import atomic_output

__all__ = ["KVDicomWebDatastore", "seg_label_info", "segment_label_info"]

logger = logging.getLogger(__name__)


def segment_label_info(values: Sequence[int], labels: Mapping[str, int], algorithm: str) -> list[dict[str, Any]]:
    """``label_info`` for MONAI Label's SEG writer: one entry per label value present, in increasing order.

    Args:
        values: the non-zero values present in the label map.
        labels: organ name -> value (the app's labels).
        algorithm: the algorithm name written into each segment.

    Returns:
        entries with ``name``, ``idx`` and dcmqi's ``segmentAttribute``.

    Raises:
        ValueError: for a value that is no organ of the app (the message lists the organs).
    """
    from kvmonai.portable.dicom_seg import SEGMENT_CODES, SEGMENT_COLOURS

    by_value = {v: name for name, v in labels.items()}
    out = []
    for value in sorted(int(v) for v in values):
        if value not in by_value:
            organs = ", ".join(f"{n}={v}" for n, v in sorted(labels.items(), key=lambda kv: kv[1]))
            raise ValueError(f"the label holds value {value}, which is no organ of this app ({organs}).")
        name = by_value[value]
        title, code, meaning = SEGMENT_CODES.get(name, (name, "85756007", "Tissue"))
        out.append(
            {
                "name": name,
                "idx": value,
                "segmentAttribute": {
                    "labelID": value,
                    "SegmentLabel": title,
                    "SegmentDescription": meaning,
                    # a final label is the algorithm's proposal as a person corrected and submitted it
                    "SegmentAlgorithmType": "SEMIAUTOMATIC",
                    "SegmentAlgorithmName": algorithm,
                    "SegmentedPropertyCategoryCodeSequence": {
                        "CodeValue": "123037004",
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Anatomical Structure",
                    },
                    "SegmentedPropertyTypeCodeSequence": {
                        "CodeValue": code,
                        "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": meaning,
                    },
                    "recommendedDisplayRGBValue": list(SEGMENT_COLOURS.get(name, (255, 0, 0))),
                },
            }
        )
    return out


def seg_label_info(seg_file: str | os.PathLike, labels: Mapping[str, int]) -> list[dict[str, Any]]:
    """Which segment number of a DICOM SEG holds which organ: ``[{"name": organ, "idx": segment number}]``.

    A segment is matched by its SNOMED CT property type (:data:`~kvmonai.portable.dicom_seg.SEGMENT_CODES`), else by
    its label (``"Large bowel"``, ``"large_bowel"``, case and spaces ignored). Unmatched segments are left out (and
    logged), so they train no channel.
    """
    import pydicom

    from kvmonai.portable.dicom_seg import SEGMENT_CODES

    by_code = {code: name for name, (_, code, _) in SEGMENT_CODES.items() if name in labels}
    by_label = {}
    for name in labels:
        by_label[name.replace("_", " ").lower()] = name
        if name in SEGMENT_CODES:
            by_label[SEGMENT_CODES[name][0].lower()] = name
    ds = pydicom.dcmread(seg_file, stop_before_pixels=True)
    out = []
    for segment in ds.get("SegmentSequence", []):
        codes = segment.get("SegmentedPropertyTypeCodeSequence") or []
        code = str(codes[0].CodeValue) if codes else ""
        label = str(segment.get("SegmentLabel", "")).replace("_", " ").strip().lower()
        name = by_code.get(code) or by_label.get(label)
        if name is None:
            title = segment.get("SegmentLabel", "")
            logger.warning(f"{seg_file}: segment {segment.SegmentNumber} '{title}' is no organ of this app; left out")
            continue
        out.append({"name": name, "idx": int(segment.SegmentNumber)})
    return out


class KVDicomWebDatastore(DICOMWebDatastore):
    """``DICOMWebDatastore`` whose SEGs keep each organ under its own name and code (see the module docstring).

    Args:
        labels: organ name -> value in the app's label maps.
        algorithm: algorithm name written into the segments (e.g. ``"kvmonai"``).
        kwargs: ``DICOMWebDatastore`` arguments (``client``, ``search_filter``, ``cache_path``...).
    """

    def __init__(self, labels: Mapping[str, int], algorithm: str = "kvmonai", **kwargs: Any) -> None:
        self._labels = dict(labels)
        self._algorithm = algorithm
        super().__init__(**kwargs)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """Save a label; a final one is stored in the PACS as a SEG with one correctly named segment per organ.

        Raises:
            ValueError: when the label holds a value that is no organ of the app.
        """
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        import numpy as np
        from monai.transforms import LoadImage
        from monailabel.datastore.utils.convert import binary_to_image

        converted = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF sends raw voxels
            converted = label_filename = binary_to_image(self.get_image_uri(image_id), label_filename)
        try:
            values = np.unique(np.asarray(LoadImage(image_only=True)(label_filename)))
            info = dict(label_info or {})
            info["label_info"] = segment_label_info([v for v in values if v != 0], self._labels, self._algorithm)
            if info["label_info"]:
                info["label_info"][0]["model_name"] = self._algorithm  # the SEG's SeriesDescription
            saved = super().save_label(image_id, label_filename, label_tag, info, label_id)
            # MONAI Label caches the PACS's list of labelled series for MONAI_LABEL_DICOMWEB_CACHE_EXPIRY (2 h);
            # without this a training started right after the save would not see the new label
            DICOMWebDatastore.get_labeled_images.cache_clear()
            return saved
        finally:
            if converted:
                os.unlink(converted)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The label file; ``label_id`` is a SEG series UID, or an image id whose final label is held locally."""
        final = label_tag == DefaultLabelTag.FINAL
        if final and not image_id and LocalDatastore.get_label_by_image_id(self, label_id, label_tag):
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        if label_tag != DefaultLabelTag.FINAL or not image_id:
            return super().get_label_uri(label_id, label_tag, image_id)
        local = os.path.join(self._datastore.label_path(DefaultLabelTag.FINAL), f"{image_id}.nii.gz")
        fetched = not os.path.exists(local)
        uri = super().get_label_uri(label_id, label_tag, image_id)
        if fetched and uri:
            seg_dir = os.path.join(self._datastore.label_path(label_tag), label_id)
            files = sorted(os.listdir(seg_dir)) if os.path.isdir(seg_dir) else []
            if files:
                info = seg_label_info(os.path.join(seg_dir, files[0]), self._labels)
                self.update_label_info(image_id, label_tag, {"label_info": info})
            # MONAI Label returns its temporary conversion and keeps a copy as the image's final label
            uri = LocalDatastore.get_label_uri(self, image_id, label_tag)
            _resample_onto(uri, self.get_image_uri(image_id))
        return uri


def _resample_onto(label_file: str, image_file: str) -> None:
    """Rewrite ``label_file`` on the grid of ``image_file`` (nearest neighbour), if its grid differs."""
    import SimpleITK as sitk  # noqa: N813 (SimpleITK's own examples name it so)

    image, label = sitk.ReadImage(image_file), sitk.ReadImage(label_file)
    same = (
        image.GetSize() == label.GetSize()
        and all(abs(a - b) < 1e-4 for a, b in zip(image.GetOrigin(), label.GetOrigin(), strict=True))
        and all(abs(a - b) < 1e-6 for a, b in zip(image.GetDirection(), label.GetDirection(), strict=True))
        and all(abs(a - b) < 1e-6 for a, b in zip(image.GetSpacing(), label.GetSpacing(), strict=True))
    )
    if same:
        return
    resampled = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    with atomic_output(label_file) as tmp:  # written whole, then renamed over the label
        sitk.WriteImage(resampled, str(tmp), True)
    logger.info(f"{label_file}: SEG label resampled onto the grid of {image_file}")
