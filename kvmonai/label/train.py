"""MONAI Label training task that fine-tunes a kvmonai bundle by running its own ``train.json``.

Built on ``monailabel.tasks.train.basic_train.BasicTrainTask`` (monailabel's bundle task module needs
torchvision). A request (3D Slicer's "Train" button, or ``POST /train/<bundle>``) runs the bundle's training
workflow, the same ``ConfigWorkflow`` as ``python -m monai.bundle run``, with these overrides:

* ``data_split``: the studies with a saved final label (``<studies>/labels/final``), ``val_split`` of them held out
  for validation (in-sample validation when only one study is labelled);
* ``loading``: studies and label maps read as in inference (see :func:`kvmonai.label.bundles.study_loading`);
* ``train#handlers``: when ``pretrained`` (fine-tuning), the current ``models/model.pt`` is loaded first and
  validated before the first epoch, so that only an epoch that beats it replaces it (a copy is kept as
  ``runs/monailabel_<run>/model_before.pt`` in any case); and a statistics writer for MONAI Label's ``train_stats``;
* ``max_epochs``, ``learning_rate``, ``device``, ``amp`` (on CUDA only), ``mlflow`` and ``output_dir``
  (``runs/monailabel_<run>``) from the request.

As with every bundle run, the best validation epoch is written to ``models/model.pt``, which the inference task
picks up at its next request.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import device_list, name_to_device

from kvmonai.bundle.workflow import device_overrides
from kvmonai.label.bundles import BundleSpec, study_loading
from kvmonai.label.datalist import label_values, split_items
from kvmonai.utils import as_flag, write_text_atomic

__all__ = ["FINE_TUNE_LR_FACTOR", "KVBundleTrainTask"]

logger = logging.getLogger(__name__)

#: default fine-tuning learning rate, relative to train.json's (a trained model does not survive the full rate:
#: with a few studies, the one-cycle schedule's warm-up is shorter than one step)
FINE_TUNE_LR_FACTOR = 0.1


def _digest(path: Path) -> str | None:
    """SHA-256 over the tensors of a weights file (not its bytes, which differ between saves of equal weights);
    ``None`` when the file does not exist or does not load."""
    from kvmonai.networks import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError:
        return None
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if torch.is_tensor(value):
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class KVBundleTrainTask(BasicTrainTask):
    """Fine-tune one kvmonai bundle on the studies' saved labels.

    Args:
        spec: the bundle (from :func:`kvmonai.label.bundles.open_bundle`).
        config: defaults for the options clients see, merged over: ``max_epochs`` of ``train.json``,
            ``learning_rate`` of ``train.json`` times :data:`FINE_TUNE_LR_FACTOR`, ``val_split`` 0.2, ``pretrained``
            true, ``mlflow`` as in ``train.json``, ``tracking_uri`` from ``MONAI_LABEL_TRACKING_URI``, ``device``.
    """

    def __init__(self, spec: BundleSpec, config: Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        stats_path = spec.root / "runs" / "monailabel_train_stats.json"
        super().__init__(
            model_dir=str(spec.root / "models"),
            description=f"fine-tune {spec.name} on the saved labels with the bundle's train.json",
            amp=False,
            load_path=str(spec.weights),
            publish_path=str(spec.weights),
            stats_path=str(stats_path),
            key_metric_filename=spec.weights.name,
            labels=dict(spec.labels),
            tracking=None,
        )
        parser = spec.parser("train")
        self._config = {
            "max_epochs": int(parser["max_epochs"]),
            "learning_rate": float(parser["learning_rate"]) * FINE_TUNE_LR_FACTOR,
            "val_split": 0.2,
            "pretrained": True,
            "mlflow": as_flag("mlflow", parser["mlflow"]),
            "tracking_uri": os.environ.get("MONAI_LABEL_TRACKING_URI", ""),
            "device": device_list(),
            "multi_gpu": False,
        }
        self._config.update(dict(config or {}))

    # The recipe pieces BasicTrainTask declares, taken from train.json; training itself runs the bundle's own
    # workflow (``train``), which builds the same objects.
    def _component(self, id_: str, context: Context | None = None) -> Any:
        parser = self.spec.parser("train")
        if context is not None and context.device is not None:
            parser.update(device_overrides(context.device))
        if context is not None and context.network is not None:
            parser["network"] = context.network
        return parser.get_parsed_content(id_)

    def network(self, context: Context) -> torch.nn.Module:
        """``network_def`` of ``train.json`` on the context's device."""
        return self._component("network", context)

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        """``optimizer`` of ``train.json`` over the context's network."""
        return self._component("optimizer", context)

    def loss_function(self, context: Context) -> Any:
        """``loss`` of ``train.json`` (Dice + BCE on sigmoid outputs)."""
        return self._component("loss", context)

    def train_pre_transforms(self, context: Context) -> Any:
        """``train#preprocessing`` of ``train.json``."""
        return self._component("train#preprocessing", context)

    def train_post_transforms(self, context: Context) -> list:
        """None: the bundle's trainer has no postprocessing (the loss takes logits)."""
        return []

    def val_pre_transforms(self, context: Context) -> Any:
        """``validate#preprocessing`` of ``train.json``."""
        return self._component("validate#preprocessing", context)

    def val_inferer(self, context: Context) -> Any:
        """``validate#inferer`` of ``train.json`` (slice by slice)."""
        return self._component("validate#inferer", context)

    def pre_process(self, request: Mapping[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        """The studies with a final label: ``image``, ``label``, ``id`` and ``label_values``.

        Args:
            request: the training request.
            datastore: MONAI Label's datastore.

        Returns:
            one entry per labelled study, sorted by id.
        """
        items = []
        # a PACS datastore fetches its SEGs and their images here (a local one only lists its folder)
        datastore.datalist()
        for image_id in sorted(set(datastore.get_labeled_images(DefaultLabelTag.FINAL))):
            info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL) or {}
            items.append(
                {
                    "image": datastore.get_image_uri(image_id),
                    "label": datastore.get_label_uri(image_id, DefaultLabelTag.FINAL),
                    "id": image_id,
                    "label_values": label_values(info.get("label_info"), self.spec.labels),
                }
            )
        return items

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Run one fine-tuning request.

        Args:
            request: options (``max_epochs``, ``learning_rate``, ``val_split``, ``pretrained``, ``mlflow``,
                ``tracking_uri``, ``device``); missing ones take the task's defaults.
            datastore: MONAI Label's datastore.

        Returns:
            the training statistics (also written for ``/info/``'s ``train_stats``).

        Raises:
            ValueError: for ``multi_gpu`` (run ``configs/multi_gpu_train.json`` with torchrun instead), no labelled
                study, a bad ``val_split``, or a ``multi_gpu``/``pretrained``/``mlflow`` value that is not true/false.
        """
        logger.info(f"{self.spec.name}: train request {dict(request)}")
        req = copy.deepcopy(self._config)
        req.update(copy.deepcopy(dict(request)))
        if as_flag("multi_gpu", req.get("multi_gpu", False)):
            raise ValueError(
                "multi_gpu: the kvmonai MONAI Label task trains in one process; for several GPUs run the bundle's "
                "configs/multi_gpu_train.json with torchrun (README 'Bundles')."
            )
        req["device"] = name_to_device(req.get("device"))
        req["run_id"] = datetime.now().strftime("%Y%m%d_%H%M%S")
        return self.train(0, 1, req, self.pre_process(req, datastore))

    def train(self, rank: int, world_size: int, request: Mapping[str, Any], datalist: list) -> dict[str, Any]:
        """Run the bundle's training workflow on ``datalist``.

        Long on purpose: it turns one MONAI Label training request into the bundle's workflow (options, datalist,
        handlers, run folder) in the order monailabel's ``BasicTrainTask`` expects, and the monailabel-dependent
        tests that cover it run only in ``.venv-label``.

        Args:
            rank: process rank (0; one process).
            world_size: number of processes (1).
            request: the merged request (see :meth:`__call__`).
            datalist: the labelled studies from :meth:`pre_process`.

        Returns:
            the statistics of the run, with ``weights_updated`` (whether ``models/model.pt`` changed).

        Raises:
            ValueError: no labelled study, a bad ``val_split``, or a ``pretrained``/``mlflow`` value that is not
                true/false.
        """
        from kvmonai.bundle import bundle_workflow

        train_items, val_items, in_sample = split_items(datalist, float(request.get("val_split", 0.0)))
        if in_sample:
            logger.warning(f"{self.spec.name}: no study held out for validation; validating on the training studies")
        run_dir = self.spec.root / "runs" / f"monailabel_{request['run_id']}"
        for n in range(1, 1000):  # two runs started in the same second get separate folders
            if not run_dir.exists():
                break
            run_dir = run_dir.with_name(f"monailabel_{request['run_id']}_{n}")
        run_dir.mkdir(parents=True)
        weights = self.spec.weights
        handlers = list(copy.deepcopy(self.spec.parser("train")["train"]["handlers"]))
        start = run_dir / "model_before.pt"
        if weights.is_file():  # kept whatever happens: a run may replace models/model.pt
            shutil.copy2(weights, start)
        if not as_flag("pretrained", request.get("pretrained", True)) or not weights.is_file():
            logger.info(
                f"{self.spec.name}: training from scratch ({weights} {'kept' if weights.is_file() else 'absent'})"
            )
            start_validation = None
        else:
            handlers.insert(0, {"_target_": "kvmonai.bundle.WeightsLoader", "network": "@network", "path": str(start)})
            # validate the served weights before the first epoch, so that only a better epoch replaces them. Last in
            # the list: the trainer's MLflow handler must open the run first (else the evaluator's logs max_epochs=1
            # and the trainer's max_epochs is refused); its interval is never reached.
            start_validation = {
                "_target_": "ValidationHandler",
                "validator": "@validate#evaluator",
                "interval": int(request["max_epochs"]) + 1,
                "epoch_level": True,
                "exec_at_start": True,
            }
            logger.info(f"{self.spec.name}: fine-tuning from {weights} (copy kept in {start})")
        handlers.append(
            {
                "_target_": "kvmonai.label.handlers.TrainStatsWriter",
                "path": self._stats_path,
                "evaluator": "@validate#evaluator",
                "run_dir": str(run_dir),
            }
        )
        if start_validation is not None:
            handlers.append(start_validation)
        device = str(request["device"])
        overrides: dict[str, Any] = {
            **self.spec.train_overrides,
            "bundle_root": str(self.spec.root),
            "data_split": [train_items, val_items],
            "check_datalist": False,  # the split comes from the datastore, not from a datalist file
            "loading": study_loading(self.spec),
            "train#handlers": handlers,
            "max_epochs": int(request["max_epochs"]),
            "learning_rate": float(request["learning_rate"]),
            **device_overrides(device),
            "amp": device.startswith("cuda"),
            "mlflow": as_flag("mlflow", request.get("mlflow", False)),
            "output_dir": str(run_dir),
            "resume": False,
        }
        if request.get("tracking_uri"):
            overrides["tracking_uri"] = str(request["tracking_uri"])
        logger.info(
            f"{self.spec.name}: training on {len(train_items)} studies, validating on {len(val_items)}"
            f"{' (in-sample)' if in_sample else ''}, {overrides['max_epochs']} epochs on {device}; run {run_dir}"
        )
        digest_before = _digest(weights)
        workflow = bundle_workflow(self.spec.root, ["train.json"], "train", logging=False, **overrides)
        try:
            workflow.run()
        finally:
            workflow.finalize()
        stats = self.stats()
        stats.update(
            {
                "train_studies": len(train_items),
                "val_studies": len(val_items),
                "in_sample_validation": in_sample,
                "weights": str(weights),
                "weights_updated": _digest(weights) != digest_before,
            }
        )
        write_text_atomic(self._stats_path, json.dumps(stats, indent=2))
        return stats
