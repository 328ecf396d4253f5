"""MONAI Label inference task that runs a kvmonai bundle's own ``inference.json``.

Built on ``monailabel.tasks.infer.basic_infer.BasicInferTask`` (monailabel's bundle task imports torchvision, which
does not load with the CPU torch). One request runs:

1. the bundle's ``preprocessing`` (load, reorient to ``PLS``, scale, 2.5D neighbour channels, resize);
2. the bundle's ``inferer`` (``SliceInferer``: the 2D network over every axial slice) with ``network_def`` and the
   weights ``models/model.pt``;
3. the bundle's ``postprocessing`` (sigmoid, ``Invertd``, threshold) without its writers (``SaveImaged``,
   ``SaveDicomSegd``), then
   :class:`~kvmonai.label.transforms.ChannelsToLabelMapd` (value ``c + 1`` for organ channel ``c``, the later
   organ where several overlap) and :class:`~kvmonai.label.transforms.RestoreInputGridd` (the input's grid);
4. MONAI Label's writer: a ``uint8`` label volume (NIfTI by default) with the input's shape and affine.

The device comes from the request (MONAI Label's ``device`` option), not from the bundle's ``device`` expression.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from kvmonai.label.bundles import BundleSpec
from kvmonai.label.transforms import ChannelsToLabelMapd, RestoreInputGridd
from kvmonai.utils import KVMonaiError

__all__ = ["MissingWeightsError", "KVBundleInferTask"]

logger = logging.getLogger(__name__)


class MissingWeightsError(KVMonaiError, ValueError):
    """A bundle has no ``models/model.pt`` yet; the message says how to train or get it."""


class KVBundleInferTask(BasicInferTask):
    """Auto-segmentation of large bowel (1), small bowel (2) and stomach (3) with one kvmonai bundle.

    Args:
        spec: the bundle (from :func:`kvmonai.label.bundles.open_bundle`).
        config: extra MONAI Label options shown to clients (merged over ``{"device": [...]}``).

    The task is listed by MONAI Label only while ``models/model.pt`` exists (``is_valid``); asked anyway it raises
    :class:`MissingWeightsError`.
    """

    def __init__(self, spec: BundleSpec, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(
            path=str(spec.weights),
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(spec.labels),
            dimension=3,  # whole volumes in and out; the 2D network runs slice by slice inside
            description=spec.description,
            config=dict(config or {}),
            load_strict=True,
        )
        self.spec = spec
        self._lock = threading.Lock()
        self._parts: dict[str, Any] | None = None

    def _pipeline(self) -> dict[str, Any]:
        """Parse ``inference.json`` once: preprocessing, inferer and postprocessing share one parser, so that
        ``Invertd`` finds the very transform objects that ran."""
        with self._lock:
            if self._parts is None:
                from monai.transforms import Compose, SaveImaged

                from kvmonai.portable.dicom_seg import SaveDicomSegd

                parser = self.spec.parser("inference")
                pre = parser.get_parsed_content("preprocessing")
                post = parser.get_parsed_content("postprocessing")
                post_list = list(post.transforms) if isinstance(post, Compose) else list(post)
                self._parts = {
                    "pre": pre,
                    "inferer": parser.get_parsed_content("inferer"),
                    "post": [t for t in post_list if not isinstance(t, (SaveImaged, SaveDicomSegd))],
                }
        return self._parts

    def pre_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing`` (one ``Compose``)."""
        return [self._pipeline()["pre"]]

    def inferer(self, data: Mapping[str, Any] | None = None) -> Any:
        """The bundle's ``inferer``."""
        return self._pipeline()["inferer"]

    def inverse_transforms(self, data: Mapping[str, Any] | None = None) -> None:
        """None: the bundle's postprocessing inverts its preprocessing itself (``Invertd``)."""
        return None

    def post_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``postprocessing`` minus ``SaveImaged``, then the label map on the input's grid."""
        from monai.transforms import SqueezeDimd

        return [
            *self._pipeline()["post"],
            ChannelsToLabelMapd(keys=self.output_label_key),
            RestoreInputGridd(keys=self.output_label_key, ref_key=self.input_key),
            SqueezeDimd(keys=self.output_label_key, dim=0, update_meta=False),
        ]

    def _get_network(self, device: str, data: Mapping[str, Any] | None) -> torch.nn.Module:
        """The bundle's ``network_def`` with ``models/model.pt`` on ``device``, reloaded when the file changes.

        Raises:
            MissingWeightsError: when ``models/model.pt`` does not exist.
            kvmonai.bundle.CheckpointError: when it is damaged or belongs to another architecture/preset.
        """
        from kvmonai.networks import load_weights

        path = self.spec.weights
        if not path.is_file():
            raise MissingWeightsError(self.spec.missing_weights_message())
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._networks.get(device)
        if cached is not None and cached[1] == stamp:
            return cached[0]
        network = self.spec.parser("inference").get_parsed_content("network_def")
        load_weights(network, path)
        network = network.to(torch.device(device)).eval()
        self._networks[device] = (network, stamp)
        logger.info(f"{self.spec.name}: loaded {path} on {device}")
        return network

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """MONAI Label's writer; ``.nii.gz`` unless the request asks for ``result_extension``, always ``uint8``."""
        data = copy.copy(data)
        ext = extension or data.get("result_extension") or ".nii.gz"
        return super().writer(data, extension=ext, dtype=dtype or "uint8")
