"""Training-state handlers of the kvmonai bundles: the whole state after every epoch, resume from it, the best model
and validation after the last epoch.

Every file is written atomically (:func:`~kvmonai.networks.checkpoint.save_atomic`), so a run killed at any moment
leaves a checkpoint it can resume from and a ``models/model.pt`` it can serve.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from monai.handlers import ValidationHandler as MonaiValidationHandler
from monai.utils import optional_import

from kvmonai.networks import CheckpointError, load_checkpoint, save_atomic, state_mismatch, unwrap_model

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["BestModelSaver", "EpochCheckpoint", "PeriodicAndFinalValidation", "ResumeFromCheckpoint"]

logger = logging.getLogger(__name__)


def _best_state(evaluator: Any) -> dict[str, float | int]:
    state = evaluator.state
    return {"metric": float(getattr(state, "best_metric", -1.0)), "epoch": int(getattr(state, "best_metric_epoch", -1))}


class EpochCheckpoint:
    """After every training epoch, write the whole training state to ``save_dir/filename`` atomically.

    The file holds the state dicts of ``save_dict`` (model, optimizer, scheduler; a ``DistributedDataParallel`` or
    ``DataParallel`` model is saved unwrapped, as ignite does), the trainer's own state (epoch, iteration) under
    ``"trainer"`` and, when ``evaluator`` is given, its best validation metric, so that :class:`ResumeFromCheckpoint`
    continues exactly where the run stopped. Attach it after the validation handler so the best metric of the epoch
    is included.

    MONAI's :class:`~monai.handlers.CheckpointSaver` does not serve: it writes through ignite's ``DiskSaver`` with
    ``atomic=False`` (a run killed while writing leaves a truncated file), gives interval checkpoints epoch-numbered
    names (a resume would have to search for the latest), and saves no evaluator's best metric.

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
        state: dict[str, Any] = {name: unwrap_model(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()  # iteration, epoch_length, max_epochs
        state["epoch"] = int(engine.state.epoch)
        if self.evaluator is not None:
            state["best"] = _best_state(self.evaluator)
        save_atomic(state, self.path)


def _schedule_lengths(objects: Mapping[str, Any]) -> dict[str, tuple[int, Any]]:
    """The length and phases of every step-count schedule (``OneCycleLR``) among ``objects``, as built for this run."""
    return {
        name: (int(obj.total_steps), copy.deepcopy(obj._schedule_phases))
        for name, obj in objects.items()
        if hasattr(obj, "total_steps") and hasattr(obj, "_schedule_phases")
    }


def _rebuild_schedules(objects: Mapping[str, Any], built: Mapping[str, tuple[int, Any]], checkpoint: Path) -> None:
    """After a resume with another ``max_epochs``: keep the schedule built for this run, at the checkpoint's step.

    A one-cycle schedule is defined by its total number of steps, and the checkpoint carries the old total, so a run
    resumed with more epochs would otherwise end its schedule early (torch: "Tried to step N times"). The rule: the
    schedule is the one this run's settings build (warm-up and annealing over the new total), continued at the step
    the checkpoint reached, so the learning rate follows the new curve from there.
    """
    for name, (total, phases) in built.items():
        obj = objects[name]
        if int(obj.total_steps) != total:
            logger.info(
                f"{checkpoint}: {name} was built for {obj.total_steps} steps, this run has {total}: continuing the "
                f"new schedule at step {obj.last_epoch}"
            )
            obj.total_steps, obj._schedule_phases = total, phases


class ResumeFromCheckpoint(CheckpointLoader):
    """At the start of training, restore the state written by :class:`EpochCheckpoint`.

    MONAI's :class:`~monai.handlers.CheckpointLoader` does the restoring (``weights_only`` load,
    ``Checkpoint.load_objects`` with ``strict=True``, the trainer's own ``max_epochs`` kept over the checkpoint's).
    This subclass adds the trainer it runs on as ``"trainer"`` and the evaluator's best metric, and turns MONAI's
    and torch's errors into ones that say what to do: before loading, it opens the file memory-mapped (no tensor
    data is read) to check that it exists, is a safe torch file and has every entry; and a checkpoint that already
    reached ``max_epochs`` is refused instead of ending the run at once.

    Args:
        checkpoint: path of the checkpoint to resume from.
        load_dict: ``name -> object with load_state_dict()`` (the same names as when saving; the trainer it is
            attached to is restored from ``"trainer"``).
        evaluator: the validation evaluator whose best metric is restored.

    Raises:
        ValueError: when ``load_dict`` is empty or names ``"trainer"`` (the trainer is added by the handler).
        CheckpointError: when run, if the checkpoint is missing, damaged, does not fit the objects, or already
            reached the trainer's ``max_epochs``.
    """

    def __init__(self, checkpoint: str, load_dict: Mapping[str, Any], evaluator: Any = None) -> None:
        if not load_dict or "trainer" in load_dict:
            raise ValueError(
                "ResumeFromCheckpoint: load_dict must name the objects to restore (model, optimizer, lr_scheduler) "
                f"and not 'trainer', which is the engine it is attached to; got {sorted(load_dict or {})}."
            )
        super().__init__(load_path=str(checkpoint), load_dict=dict(load_dict), name=__name__, map_location="cpu")
        self.checkpoint = Path(checkpoint)
        self.objects = dict(load_dict)
        self.evaluator = evaluator

    def __call__(self, engine: Any) -> None:
        """Check the checkpoint, restore it through :class:`~monai.handlers.CheckpointLoader`, then the best metric.

        Args:
            engine: the trainer.

        Raises:
            CheckpointError: see the class.
        """
        if not self.checkpoint.is_file():
            raise CheckpointError(
                f"cannot resume: {self.checkpoint} does not exist. Start the run without the resume override, or "
                "point it at the output folder of the interrupted run."
            )
        ckpt = load_checkpoint(self.checkpoint, mmap=True)  # clear errors for damaged or foreign files
        self.load_dict = {**self.objects, "trainer": engine}
        missing = [name for name in self.load_dict if name not in ckpt]
        if missing:
            raise CheckpointError(f"cannot resume from {self.checkpoint}: it has no {missing} entries.")
        best = ckpt.get("best") if self.evaluator is not None else None
        model = self.objects.get("model")
        if isinstance(model, torch.nn.Module) and isinstance(ckpt.get("model"), Mapping):
            net = unwrap_model(model)
            details = state_mismatch(net, ckpt["model"])
            if details:
                raise CheckpointError(
                    f"cannot resume from {self.checkpoint}: its model does not fit {type(net).__name__} "
                    f"({details}). It was trained with another architecture, attention or preset: resume with those "
                    "settings, or start a fresh run (without --resume) in another output_dir."
                )
        del ckpt  # releases the mapping; CheckpointLoader reads the file itself
        max_epochs = engine.state.max_epochs
        schedules = _schedule_lengths(self.objects)
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as e:
            if engine.state.epoch <= max_epochs:  # else MONAI refused a checkpoint past max_epochs: reported below
                raise CheckpointError(
                    f"cannot resume from {self.checkpoint}: it does not fit this bundle's network/optimizer ({e})."
                ) from None
        if engine.state.epoch >= max_epochs:
            raise CheckpointError(
                f"{self.checkpoint} already finished epoch {engine.state.epoch} of max_epochs={max_epochs}: "
                "raise the number of epochs to train further."
            )
        _rebuild_schedules(self.objects, schedules, self.checkpoint)
        if best is not None:
            self.evaluator.state.best_metric = best["metric"]
            self.evaluator.state.best_metric_epoch = best["epoch"]
        logger.info(f"resumed from {self.checkpoint} after epoch {engine.state.epoch}")


class PeriodicAndFinalValidation(MonaiValidationHandler):
    """Validate every ``interval`` epochs and after the last epoch: MONAI's :class:`~monai.handlers.ValidationHandler`
    plus the final epoch (a subclass under its own name, so that configs never mistake it for MONAI's class).

    With ``epoch_level`` MONAI validates after every ``interval``-th epoch only, so a run of 3 epochs with
    ``interval=5`` never validates: no best model is written and evaluation has nothing to load. Here the last epoch
    (``max_epochs``) is validated too, whatever the interval, so every finished training leaves ``models/model.pt``.

    Args:
        interval: validate every ``interval`` epochs (or iterations) and after the last epoch.
        validator: the validation evaluator.
        epoch_level: count epochs (else iterations; then only MONAI's rule applies).
        exec_at_start: also validate before training.
    """

    def attach(self, engine: Any) -> None:
        if not self.epoch_level:
            super().attach(engine)
            return
        interval = self.interval

        def due(engine: Any, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


class BestModelSaver:
    """Attach to the validation evaluator: write the network's state dict atomically when the key metric improves.

    Relies on MONAI's evaluator bookkeeping (``state.best_metric_epoch`` is updated when the key metric improves).
    MONAI's ``CheckpointSaver(save_key_metric=True)`` does not serve: it writes in place (``atomic=False``), so a
    kill while writing would corrupt the served ``models/model.pt``, and it keeps its own record of the best score,
    which a resumed run loses (its first validation would overwrite a better model); the evaluator's best metric
    followed here is restored by :class:`ResumeFromCheckpoint`.

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
            save_atomic(unwrap_model(self.network).state_dict(), self.path)
