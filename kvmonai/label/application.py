"""The kvmonai MONAI Label app: every selected bundle as an inference task and a training task of the same name.

``kvmonai/label/app/main.py`` exposes :class:`KVMonaiLabelApp` to ``monailabel start_server --app``. Options
(``--conf key value``, see :class:`~kvmonai.label.bundles.LabelAppSettings`):

* ``bundles``: folder of bundles (default ``$KVMONAI_BUNDLES``, else the repository's ``bundles/``);
* ``models``: comma-separated bundle names (default: all), e.g. ``setr_kv,transunet_kv``;
* ``overrides``: config overrides for every bundle, e.g. ``preset=small,img_size=128`` (use the values the
  weights were trained with).

Nothing is downloaded: no model zoo, no SAM weights. Networks are built at their first request.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

import kvmonai
from kvmonai.label.bundles import LabelAppSettings
from kvmonai.label.infer import KVBundleInferTask, MissingWeightsError
from kvmonai.label.train import KVBundleTrainTask
from kvmonai.networks import CheckpointError

__all__ = ["KVMonaiLabelApp"]

logger = logging.getLogger(__name__)


class KVMonaiLabelApp(MONAILabelApp):
    """MONAI Label app serving kvmonai bundles by name (e.g. ``setr_kv``) for auto-segmentation and fine-tuning.

    Args:
        app_dir: the app folder (MONAI Label writes ``logs/`` and other folders there).
        studies: the studies folder (images; MONAI Label keeps labels in ``labels/final`` under it).
        conf: ``--conf`` options; see the module docstring.

    Raises:
        ValueError: when the bundles folder, a bundle name, a bundle config or an override is wrong.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        self.settings = LabelAppSettings.from_conf(conf)
        self.specs = self.settings.bundles()
        labels: dict[str, int] = {}
        for spec in self.specs:
            for name, value in spec.labels.items():
                if labels.setdefault(name, value) != value:
                    raise ValueError(
                        f"bundle {spec.name!r} gives label {name!r} the value {value}, another bundle "
                        f"{labels[name]}; serve bundles with the same organs (--conf models)."
                    )
        for spec in self.specs:
            if not spec.weights.is_file():
                logger.warning(spec.missing_weights_message() + " Until then it is offered for training only.")
        names = ", ".join(s.name for s in self.specs)
        #: organ name -> value in the label maps (each model's ``labels`` in ``/info/`` give the same)
        self.label_values = dict(sorted(labels.items(), key=lambda kv: kv[1]))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="kvmonai",
            description=f"kvmonai bundles ({names}) from {self.settings.bundles_dir}; "
            f"overrides {self.settings.overrides or 'none'}",
            version=kvmonai.__version__,
            # a list of names, as MONAI Label builds it itself from the models' labels: its OHIF panel needs a list
            labels=list(self.label_values),
        )

    def init_remote_datastore(self) -> Any:
        """A DICOMweb PACS as :class:`~kvmonai.label.dicomweb.KVDicomWebDatastore` (organ-correct SEG both ways).

        Built as monailabel's own ``_init_dicomweb_datastore`` builds its datastore (same settings, and dcmqi taken
        from ``PATH``), with kvmonai's subclass. XNAT, DSA and Google Cloud datastores are MONAI Label's.
        """
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMwebClientX

        from kvmonai.label.dicomweb import KVDicomWebDatastore

        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa") or "googleapis.com" in self.studies:
            return super().init_remote_datastore()
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            from dicomweb_client.session_utils import create_session_from_user_pass

            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        self._download_dcmqi_tools()  # a no-op when itkimage2segimage is on PATH (scripts/label_server.sh)
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return KVDicomWebDatastore(
            labels=self.label_values,
            algorithm=f"kvmonai {kvmonai.__version__}",
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=cache or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """One :class:`~kvmonai.label.infer.KVBundleInferTask` per bundle, named like the bundle."""
        return {spec.name: KVBundleInferTask(spec) for spec in self.specs}

    def init_trainers(self) -> dict[str, TrainTask]:
        """One :class:`~kvmonai.label.train.KVBundleTrainTask` per bundle, named like the bundle."""
        return {spec.name: KVBundleTrainTask(spec) for spec in self.specs}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's inference, with clear HTTP errors for an unknown bundle (404) or unusable weights (409).

        Args:
            request: ``model``, ``image`` and options.
            datastore: the datastore (default: the app's).

        Returns:
            MONAI Label's result (label file and parameters).

        Raises:
            fastapi.HTTPException: 404 when ``model`` is not served, 409 when its weights are missing or do not fit.
        """
        from fastapi import HTTPException

        model = request.get("model")
        if model and model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"model {model!r} is not served here; served: {', '.join(self._infers)}."
            )
        try:
            return super().infer(request, datastore)
        except (MissingWeightsError, CheckpointError) as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
