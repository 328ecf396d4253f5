"""Ignite handlers used by the kvmonai bundles: atomic checkpoints, resume, best model, curves and run settings."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from kvmonai.bundle.checkpoint import CheckpointError, load_checkpoint, save_atomic
from kvmonai.utils import as_flag, pyplot, save_figure, write_text_atomic

Events, _ = optional_import("ignite.engine", name="Events")
Checkpoint, _ = optional_import("ignite.handlers", name="Checkpoint")

__all__ = [
    "BestModelSaver",
    "EpochCheckpoint",
    "OptimizeForInference",
    "ResumeFromCheckpoint",
    "RunRecorder",
    "WeightsLoader",
]

logger = logging.getLogger(__name__)


def _best_state(evaluator: Any) -> dict[str, float | int]:
    state = evaluator.state
    return {"metric": float(getattr(state, "best_metric", -1.0)), "epoch": int(getattr(state, "best_metric_epoch", -1))}


class EpochCheckpoint:
    """After every training epoch, write the whole training state to ``save_dir/filename`` atomically.

    The file holds the state dicts of ``save_dict`` (model, optimizer, scheduler), the trainer's own state (epoch,
    iteration) under ``"trainer"`` and, when ``evaluator`` is given, its best validation metric, so that
    :class:`ResumeFromCheckpoint` continues exactly where the run stopped. Attach it after the validation handler so
    the best metric of the epoch is included.

    Args:
        save_dir: checkpoint folder.
        save_dict: ``name -> object with state_dict()`` (the trainer it is attached to is added as ``"trainer"``).
        evaluator: the validation evaluator whose best metric is kept.
        filename: checkpoint file name.
    """

    def __init__(
        self, save_dir: str, save_dict: Mapping[str, Any], evaluator: Any = None, filename: str = "checkpoint_last.pt"
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.evaluator = evaluator

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        state: dict[str, Any] = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()  # iteration, epoch_length, max_epochs
        state["epoch"] = int(engine.state.epoch)
        if self.evaluator is not None:
            state["best"] = _best_state(self.evaluator)
        save_atomic(state, self.path)


class ResumeFromCheckpoint:
    """At the start of training, restore the state written by :class:`EpochCheckpoint` (``weights_only`` load).

    Args:
        checkpoint: path of the checkpoint to resume from.
        load_dict: ``name -> object with load_state_dict()`` (the same names as when saving; the trainer it is
            attached to is restored from ``"trainer"``).
        evaluator: the validation evaluator whose best metric is restored.

    Raises:
        CheckpointError: if the checkpoint is missing, damaged, does not fit the objects, or already reached the
            trainer's ``max_epochs``.
    """

    def __init__(self, checkpoint: str, load_dict: Mapping[str, Any], evaluator: Any = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.load_dict = dict(load_dict)
        self.evaluator = evaluator

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        if not self.checkpoint.is_file():
            raise CheckpointError(
                f"cannot resume: {self.checkpoint} does not exist. Start the run without the resume override, or "
                "point it at the output folder of the interrupted run."
            )
        ckpt = load_checkpoint(self.checkpoint)
        to_load = {**self.load_dict, "trainer": engine}
        missing = [name for name in to_load if name not in ckpt]
        if missing:
            raise CheckpointError(f"cannot resume from {self.checkpoint}: it has no {missing} entries.")
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=ckpt, strict=True)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"cannot resume from {self.checkpoint}: it does not fit this bundle's network/optimizer ({e})."
            ) from None
        if engine.state.epoch >= max_epochs:
            raise CheckpointError(
                f"{self.checkpoint} already finished epoch {engine.state.epoch} of max_epochs={max_epochs}: "
                "raise the number of epochs to train further."
            )
        engine.state.max_epochs = max_epochs
        if self.evaluator is not None and "best" in ckpt:
            self.evaluator.state.best_metric = ckpt["best"]["metric"]
            self.evaluator.state.best_metric_epoch = ckpt["best"]["epoch"]
        logger.info(f"resumed from {self.checkpoint} after epoch {engine.state.epoch}")


class BestModelSaver:
    """Attach to the validation evaluator: write the network's state dict atomically when the key metric improves.

    Relies on MONAI's evaluator bookkeeping (``state.best_metric_epoch`` is updated when the key metric improves).

    Args:
        network: the trained network.
        path: where to write the weights (``models/model.pt`` in a bundle).
    """

    def __init__(self, network: torch.nn.Module, path: str) -> None:
        self.network = network
        self.path = Path(path)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if engine.state.best_metric_epoch == engine.state.epoch:
            net = getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel
            save_atomic(net.state_dict(), self.path)


class RunRecorder:
    """Record a run for people and for MLflow: settings, per-epoch metrics CSV and a training-curve plot.

    On the trainer it accumulates the loss of each iteration; after each epoch (attach it after the validation
    handler) it sets ``trainer.state.metrics["train_loss"]`` to the epoch mean (so an MLflow handler attached after it
    logs it) and appends the epoch's validation metrics to ``output_dir/metrics.csv``; after the last epoch it draws
    ``output_dir/training_curves.png`` (drawing costs about 0.7 s, as much as five training steps of a small
    network, so not after every epoch). At start it writes ``settings`` to
    ``output_dir/run_settings.json`` and, when
    a run is resumed, drops CSV rows of epochs that are trained again, so every epoch appears once.

    Args:
        output_dir: run folder.
        evaluator: validation evaluator whose ``state.metrics`` are recorded.
        settings: resolved run settings (architecture, attention, data, fold, seed, ...), written as JSON.
        loss_key: key of the loss in the trainer's output.
    """

    def __init__(
        self, output_dir: str, evaluator: Any = None, settings: Mapping[str, Any] | None = None, loss_key: str = "loss"
    ) -> None:
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.settings = dict(settings or {})
        self.loss_key = loss_key
        self._losses: list[float] = []
        self.csv_path = self.output_dir / "metrics.csv"
        self.plot_path = self.output_dir / "training_curves.png"

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _rows(self) -> list[dict[str, str]]:
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def started(self, engine: Any) -> None:
        settings = {
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in self.settings.items()
        }
        write_text_atomic(self.output_dir / "run_settings.json", json.dumps(settings, indent=2) + "\n")
        done = int(engine.state.epoch)  # > 0 after a resume
        self._write([r for r in self._rows() if int(r["epoch"]) <= done])

    def iteration_completed(self, engine: Any) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        loss = item[self.loss_key] if isinstance(item, Mapping) else item
        self._losses.append(float(loss))

    def epoch_completed(self, engine: Any) -> None:
        mean_loss = sum(self._losses) / max(len(self._losses), 1)
        self._losses.clear()
        engine.state.metrics["train_loss"] = mean_loss
        row: dict[str, Any] = {"epoch": engine.state.epoch, "train_loss": f"{mean_loss:.6f}"}
        validated = self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch
        if validated:  # metrics of this epoch's validation only (validation may run every few epochs)
            for key, value in self.evaluator.state.metrics.items():
                if isinstance(value, (int, float)):
                    row[key if key.startswith("val_") else f"val_{key}"] = f"{float(value):.6f}"
        rows = [r for r in self._rows() if int(r["epoch"]) < engine.state.epoch] + [row]
        self._write(rows)
        if engine.state.epoch >= (engine.state.max_epochs or 0):
            self._plot(rows)

    def _write(self, rows: list[Mapping[str, Any]]) -> None:
        if not rows:
            self.csv_path.unlink(missing_ok=True)
            return
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        lines = [",".join(fields)] + [",".join(str(r.get(k, "")) for k in fields) for r in rows]
        write_text_atomic(self.csv_path, "\n".join(lines) + "\n")

    def _plot(self, rows: list[Mapping[str, Any]]) -> None:
        plt = pyplot()
        epochs = [int(r["epoch"]) for r in rows]
        val_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("val_")))
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
        axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
        for key in val_keys:
            axes[1].plot(
                epochs, [float(r[key]) if r.get(key) else float("nan") for r in rows], marker="o", label=key[4:]
            )
        axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
        if val_keys:
            axes[1].legend()
        title = " ".join(str(self.settings[k]) for k in ("arch", "attention", "preset") if k in self.settings)
        fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, self.plot_path, dpi=100)


class OptimizeForInference:
    """Attach to an inference engine after :class:`WeightsLoader`: apply the exact inference rewrites at start.

    See :func:`kvmonai.inference.optimize_for_inference` (BatchNorm folding, frozen weight standardisation,
    channels-last weights). The network is changed in place, so attach it only to inference engines.

    Args:
        network: the loaded network.
        fold: fold BatchNorms and freeze training-time reparameterisations.
        channels_last: store 4D weights channels-last.
    """

    def __init__(self, network: torch.nn.Module, fold: bool = True, channels_last: bool = True) -> None:
        self.network = network
        self.fold = as_flag("fold", fold)
        self.channels_last = as_flag("channels_last", channels_last)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        from kvmonai.inference import optimize_for_inference

        optimize_for_inference(self.network, fold=self.fold, channels_last=self.channels_last)


class WeightsLoader:
    """Attach to an engine: load network weights at start, with the clear errors of :func:`load_weights`.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped).
        path: a plain state dict (``models/model.pt``) or a training checkpoint with a ``"model"`` entry.
    """

    def __init__(self, network: torch.nn.Module, path: str) -> None:
        self.network = network
        self.path = path

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        from kvmonai.bundle.checkpoint import load_weights

        load_weights(getattr(self.network, "module", self.network), self.path)
        logger.info(f"loaded weights from {self.path}")
