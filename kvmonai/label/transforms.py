"""Transforms between the bundles' multi-label output and the single label map that MONAI Label exchanges.

The bundles predict one sigmoid channel per organ (``large_bowel``, ``small_bowel``, ``stomach``), so organs may
overlap. Viewers (3D Slicer, OHIF) and MONAI Label's datastore exchange one label volume instead, value ``c + 1``
for channel ``c``:

* :class:`ChannelsToLabelMapd` (inference): ``(C, *spatial)`` masks -> ``(1, *spatial)`` label map. Where several
  organs are predicted at one voxel, the **later channel wins** (stomach over small bowel over large bowel).
* :class:`LabelMapToChannelsd` (training): a saved label map -> ``(C, *spatial)`` binary channels, channel ``c``
  where the map holds the value of organ ``c`` (by default ``c + 1``; other values are background).
* :class:`RestoreInputGridd` (inference): the bundles reorient every volume to ``PLS`` before slicing it; this puts
  the label back on the voxel grid of the input file (same array shape and affine), which is what a viewer expects.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from kvmonai.data import RAS_AXIS_LABELS

__all__ = ["ChannelsToLabelMapd", "LabelMapToChannelsd", "RestoreInputGridd"]


def _like(values: torch.Tensor, ref: Any) -> torch.Tensor:
    """``values`` as a ``MetaTensor`` with a copy of ``ref``'s metadata (affine included) when ``ref`` has any."""
    if isinstance(ref, MetaTensor):
        return MetaTensor(values, meta=dict(ref.meta))
    return values


class ChannelsToLabelMapd(MapTransform):
    """Binary organ channels ``(C, *spatial)`` -> one label map ``(1, *spatial)`` of ``uint8``, value ``c + 1``.

    A voxel is organ ``c`` when channel ``c`` exceeds ``threshold``; where several channels do, the highest ``c``
    wins. Metadata (the affine) is kept.

    Args:
        keys: keys of the channel-first predictions.
        threshold: a channel is "on" above this value (the bundles' postprocessing already gives 0/1).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Convert every key.

        Args:
            data: the sample.

        Returns:
            a copy with each key replaced by its label map.

        Raises:
            ValueError: when a prediction has no channel axis or more than 255 channels.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            pred = torch.as_tensor(d[key])
            if pred.ndim < 2 or not 1 <= pred.shape[0] <= 255:
                raise ValueError(
                    f"{key!r}: expected channel-first organ masks (C, *spatial) with 1 to 255 channels, "
                    f"got shape {tuple(pred.shape)}."
                )
            label = torch.zeros(pred.shape[1:], dtype=torch.uint8, device=pred.device)
            for c in range(pred.shape[0]):
                label[pred[c] > self.threshold] = c + 1
            d[key] = _like(label[None], d[key])
        return d


class LabelMapToChannelsd(MapTransform):
    """One label map ``(1, *spatial)`` -> binary organ channels ``(C, *spatial)`` of ``float32``.

    Channel ``c`` is 1 where the map equals ``values[c]``. ``values`` defaults to ``1, ..., num_classes`` (the
    mapping of :class:`ChannelsToLabelMapd`); a sample may carry its own under ``values_key`` (e.g. when the
    annotator's segments were saved in another order). Voxels of any other value are background in every channel.

    Args:
        keys: keys of the label maps.
        num_classes: number of output channels.
        values_key: optional key of the sample holding ``num_classes`` label values, one per channel; a negative
            value leaves that channel empty.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: when ``num_classes`` is not positive.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int = 3,
        values_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.values_key = values_key

    def _values(self, d: Mapping[Hashable, Any]) -> list[int]:
        values: Sequence[int] | None = d.get(self.values_key) if self.values_key else None
        if values is None:
            return list(range(1, self.num_classes + 1))
        if len(values) != self.num_classes:
            raise ValueError(
                f"{self.values_key!r} holds {len(values)} label values, expected one per class ({self.num_classes})."
            )
        return [int(v) for v in values]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Convert every key.

        Args:
            data: the sample.

        Returns:
            a copy with each key replaced by its channels.

        Raises:
            ValueError: when a label is not single-channel, or the sample's label values do not fit.
        """
        d = dict(data)
        values = self._values(d)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if label.ndim < 2 or label.shape[0] != 1:
                raise ValueError(
                    f"{key!r}: expected a single-channel label map (1, *spatial) with organ values, got shape "
                    f"{tuple(label.shape)}."
                )
            channels = torch.stack([label[0] == v for v in values]).to(torch.float32)
            d[key] = _like(channels, d[key])
        return d


class RestoreInputGridd(MapTransform):
    """Put a prediction made on the reoriented volume back on the voxel grid of the input file.

    The reference image (the preprocessed input) records the file's ``original_affine`` and ``spatial_shape`` in
    its metadata. The prediction, carrying its own affine (the bundles' ``PLS`` orientation after ``Invertd``), is
    flipped and permuted to the file's orientation; then its shape must equal the file's and its affine the file's
    (up to rounding), and the file's affine is set exactly.

    Args:
        keys: keys of the channel-first predictions (``MetaTensor`` with an affine).
        ref_key: key of the preprocessed input image.
        atol: tolerance in millimetres when comparing affines.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", atol: float = 1e-2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.atol = float(atol)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Reorient every key.

        Args:
            data: the sample, with the reference image under ``ref_key``.

        Returns:
            a copy with each key on the input file's grid.

        Raises:
            ValueError: when the reference lacks ``original_affine``/``spatial_shape`` metadata, or the prediction
                does not cover the input's grid (a bundle whose postprocessing does not invert its resizing).
        """
        import nibabel as nib
        from monai.transforms import Orientation

        d = dict(data)
        ref = d.get(self.ref_key)
        meta = ref.meta if isinstance(ref, MetaTensor) else {}
        if "original_affine" not in meta or "spatial_shape" not in meta:
            raise ValueError(
                f"{self.ref_key!r} carries no 'original_affine'/'spatial_shape' metadata: load it with MONAI "
                "(kvmonai.data.LoadVolumed) so that the prediction can be put back on the input's grid."
            )
        affine = np.asarray(torch.as_tensor(meta["original_affine"]).cpu(), dtype=np.float64)
        shape = tuple(int(s) for s in np.asarray(torch.as_tensor(meta["spatial_shape"]).cpu()).ravel())
        codes = "".join(nib.orientations.aff2axcodes(affine))
        for key in self.key_iterator(d):
            pred = d[key]
            if not isinstance(pred, MetaTensor):
                raise ValueError(f"{key!r}: expected a MetaTensor with an affine, got {type(pred).__name__}.")
            out = Orientation(axcodes=codes, labels=RAS_AXIS_LABELS)(pred)
            got = np.asarray(out.affine.cpu(), dtype=np.float64)
            if tuple(out.shape[1:]) != shape or not np.allclose(got, affine, atol=self.atol):
                raise ValueError(
                    f"{key!r}: the prediction (shape {tuple(out.shape[1:])}) does not lie on the input's grid "
                    f"(shape {shape}, affine {affine.round(3).tolist()}); the bundle's postprocessing must invert "
                    "its preprocessing (Invertd)."
                )
            out = MetaTensor(out.as_tensor(), meta=dict(out.meta))
            out.affine = torch.as_tensor(affine)
            d[key] = out
        return d
