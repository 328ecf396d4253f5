"""Ignite handlers used by the kvmonai bundles: atomic checkpoints, resume, best model, curves and run settings."""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from monai.handlers import ValidationHandler as MonaiValidationHandler
from monai.utils import optional_import

from kvmonai.networks import CheckpointError, load_checkpoint, save_atomic, state_mismatch
from kvmonai.utils import as_flag, csv_text, pyplot, save_figure, write_text_atomic

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = [
    "BestModelSaver",
    "EpochCheckpoint",
    "OptimizeForInference",
    "PretrainedLoader",
    "ResumeFromCheckpoint",
    "RunGuard",
    "RunInUseError",
    "lock_run_folder",
    "move_aside",
    "read_metrics_csv",
    "release_run_folder",
    "RunRecorder",
    "ValidationHandler",
    "WeightsLoader",
]

logger = logging.getLogger(__name__)


def _unwrap(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (ignite loads state into it)."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


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
        state: dict[str, Any] = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
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
            details = state_mismatch(_unwrap(model), ckpt["model"])
            if details:
                raise CheckpointError(
                    f"cannot resume from {self.checkpoint}: its model does not fit {type(_unwrap(model)).__name__} "
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


class ValidationHandler(MonaiValidationHandler):
    """MONAI's :class:`~monai.handlers.ValidationHandler`, which also validates after the last epoch.

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


class RunInUseError(RuntimeError):
    """Another process is writing to the same run folder; nothing of it was touched."""


#: what a training writes into its run folder (moved aside together when a fresh run starts there)
RUN_OUTPUTS: tuple[str, ...] = (
    "checkpoint_last.pt",
    "metrics.csv",
    "run_settings.json",
    "training_curves.png",
    "eval",
    "result.json",
    "pretrained_report.txt",
)


def move_aside(run_dir: Path, paths: Sequence[Path]) -> Path | None:
    """Move the existing ``paths`` into ``run_dir/previous/<YYYYmmdd-HHMMSS>/``; returns that folder, or ``None``
    when none of them exists (nothing is created then)."""
    import shutil
    import time

    present = [Path(p) for p in paths if Path(p).exists()]
    if not present:
        return None
    dest = Path(run_dir) / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for path in present:
        shutil.move(str(path), str(dest / path.name))
    return dest


#: locks taken by :func:`lock_run_folder` in a config's ``initialize`` step, adopted by the trainer's RunGuard
_PENDING_LOCKS: dict[str, Any] = {}


def _flock(folder: Path) -> Any:
    """An open handle of ``folder/.lock`` holding an exclusive ``flock``; raises :class:`RunInUseError` if taken."""
    import fcntl
    import os
    import time

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")  # noqa: SIM115 - held open for the run: the lock lives as long as the handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunInUseError(
            f"{folder} is being written by another training ({holder}); nothing was touched. Wait for it to "
            "finish, or give this run its own output_dir (e.g. another seed or --output_dir)."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def lock_run_folder(output_dir: str, enabled: bool = True) -> bool:
    """Lock a run folder in a config's ``initialize`` step, before the handlers are built (MONAI's
    ``MLFlowHandler`` opens its store when built); the trainer's :class:`RunGuard` adopts the lock.

    Args:
        output_dir: the run folder.
        enabled: off on the other ranks of a distributed run.

    Returns:
        ``True`` (for use in a config expression).

    Raises:
        RunInUseError: when another training holds the folder.
    """
    key = str(Path(output_dir).resolve())
    if as_flag("enabled", enabled) and key not in _PENDING_LOCKS:
        _PENDING_LOCKS[key] = _flock(Path(output_dir))
    return True


def release_run_folder(output_dir: str) -> bool:
    """Release a lock of :func:`lock_run_folder` that no training adopted (``finalize``); returns ``True``."""
    handle = _PENDING_LOCKS.pop(str(Path(output_dir).resolve()), None)
    if handle is not None:
        handle.close()
    return True


class RunGuard:
    """Attach first to the trainer: one writer per run folder, no silent overwrite, and MLflow runs left usable.

    It holds an exclusive ``flock`` on ``output_dir/.lock`` (released by the kernel when the process ends, even on
    SIGKILL): taken by :func:`lock_run_folder` in the config's ``initialize`` step, before the handlers are built
    (MONAI's ``MLFlowHandler`` opens its store when built), and adopted here, or taken when training starts. A
    second training into the same folder fails at once with :class:`RunInUseError`, before anything of the first is
    touched; ``finalize`` releases the lock.

    A fresh run (``resume`` off) in a folder that holds an earlier run's outputs moves them, and the served weights
    ``model_path``, into ``output_dir/previous/<time>/`` and logs which. Earlier MLflow runs of the same name still
    marked RUNNING (a run that was killed) are marked KILLED, so MONAI's ``MLFlowHandler`` starts a new run instead
    of appending to the killed one. A resumed run keeps both and continues
    the MLflow run. When training raises, the active MLflow run of this name is marked FAILED.

    MONAI has no such guard: its ``MLFlowHandler`` appends to any unfinished run of the same name, and its
    checkpoint and metric writers overwrite in place.

    Args:
        output_dir: the run folder.
        resume: whether this run resumes the folder's checkpoint.
        model_path: the weights this training writes (``models/model.pt``).
        tracking_uri: MLflow tracking URI (``None``: MLflow off).
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        enabled: off on the other ranks of a distributed run (rank 0 writes the folder).
    """

    def __init__(
        self,
        output_dir: str,
        resume: bool = False,
        model_path: str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str = "kvmonai",
        run_name: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = as_flag("enabled", enabled)
        self.output_dir = Path(output_dir)
        self.resume = as_flag("resume", resume)
        self.model_path = Path(model_path) if model_path else None
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.run_name = run_name or self.output_dir.name
        self._lock: Any = None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        engine.add_event_handler(Events.COMPLETED, self.release)

    def _acquire(self) -> None:
        if self._lock is None:  # adopt the lock taken in initialize, or take it now
            key = str(self.output_dir.resolve())
            self._lock = _PENDING_LOCKS.pop(key, None) or _flock(self.output_dir)

    def release(self, engine: Any = None) -> None:
        """Drop the lock (at the end of training; the kernel drops it too when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _move_aside(self) -> None:
        earlier = [self.output_dir / n for n in RUN_OUTPUTS if (self.output_dir / n).exists()]
        if self.model_path is not None and self.model_path.is_file() and earlier:
            earlier.append(self.model_path)
        dest = move_aside(self.output_dir, earlier)
        if dest is not None:
            logger.warning(
                f"fresh run in {self.output_dir}: moved the earlier run's {', '.join(p.name for p in earlier)} to "
                f"{dest} (resume true continues a run instead)"
            )

    def _mlflow_runs(self, status: str) -> list[Any]:
        import os

        if not self.tracking_uri:
            return []
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri  # as MONAI's MLFlowHandler resolves it
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
            return []  # no store yet, so no runs: do not create one here
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.status = '{status}'")
        return [(client, r) for r in runs if r.info.run_name == self.run_name]

    def started(self, engine: Any) -> None:
        """Lock the folder; for a fresh run, move earlier outputs aside and close killed MLflow runs."""
        if not self.enabled:
            return
        self._acquire()
        if self.resume:
            return
        self._move_aside()
        for client, run in self._mlflow_runs("RUNNING"):
            client.set_terminated(run.info.run_id, "KILLED")
            logger.warning(f"MLflow run {run.info.run_id} ({self.run_name}) was left RUNNING: marked KILLED")

    def failed(self, engine: Any, e: BaseException) -> None:
        """Mark the MLflow run FAILED, release the lock, and re-raise ``e``."""
        try:
            for client, run in self._mlflow_runs("RUNNING"):
                client.set_terminated(run.info.run_id, "FAILED")
        except Exception as err:  # the training's own error matters more
            logger.warning(f"could not mark the MLflow run FAILED: {err}")
        finally:
            self.release()
        raise e


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
            save_atomic(_unwrap(self.network).state_dict(), self.path)


def read_metrics_csv(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``run_dir/metrics.csv`` (one per epoch, as :class:`RunRecorder` writes them; values as text),
    or ``[]`` when the run has written none yet."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
        return read_metrics_csv(self.output_dir)

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
        write_text_atomic(self.csv_path, csv_text(rows))

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
        fuse: fuse BatchNorms into the preceding convolutions and freeze training-time reparameterisations.
        channels_last: store 4D weights channels-last.

    Raises:
        ValueError: when ``fuse`` or ``channels_last`` is not a boolean (or the strings true/false).
    """

    def __init__(self, network: torch.nn.Module, fuse: bool = True, channels_last: bool = True) -> None:
        self.network = network
        self.fuse = as_flag("fuse", fuse)
        self.channels_last = as_flag("channels_last", channels_last)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        from kvmonai.inference import optimize_for_inference

        optimize_for_inference(self.network, fuse=self.fuse, channels_last=self.channels_last)


class WeightsLoader:
    """Attach to an engine: load network weights at start, with the clear errors of :func:`load_weights`.

    MONAI's ``CheckpointLoader(load_dict={"model": network})`` loads the same files, but reports weights of another
    architecture as a bare ``load_state_dict`` error; :func:`load_weights` names the missing, unexpected and
    wrong-shape keys and the likely cause, and maps the file instead of reading it.

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
        from kvmonai.networks import load_weights

        load_weights(getattr(self.network, "module", self.network), self.path)
        logger.info(f"loaded weights from {self.path}")


class PretrainedLoader:
    """Attach to the trainer after :class:`ResumeFromCheckpoint`: load pretrained weights when training starts.

    The weights go through :func:`kvmonai.networks.pretrained.load_pretrained` (formats, mapping, KV twin, report);
    the report is logged and written to ``report_path``. The bundles disable this handler when a run resumes, so a
    resumed run continues from its checkpoint and never reloads the pretrained weights over it.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped).
        path: the weights file (the bundle's ``pretrained``).
        strict: see :func:`~kvmonai.networks.pretrained.load_pretrained`.
        report_path: where to write the report (``None``: log only).
        enabled: off on ranks that should not write the report (every rank loads).

    Raises:
        ValueError: when ``path`` is empty.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        path: str,
        strict: bool = True,
        report_path: str | None = None,
        enabled: bool = True,
    ) -> None:
        if not path:
            raise ValueError("PretrainedLoader: path is empty; set the bundle's pretrained to a weights file.")
        self.network = network
        self.path = str(path)
        self.strict = as_flag("pretrained_strict", strict)
        self.report_path = Path(report_path) if report_path else None
        self.enabled = as_flag("enabled", enabled)
        self.report: Any = None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        from kvmonai.networks import load_pretrained

        self.report = load_pretrained(_unwrap(self.network), self.path, strict=self.strict)
        logger.info(self.report.summary())
        if self.enabled and self.report_path is not None:
            write_text_atomic(self.report_path, self.report.summary() + "\n")
