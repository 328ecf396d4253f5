"""The run folder of a training: one writer at a time (:class:`RunLock`), earlier outputs moved aside, MLflow run
states kept usable (:class:`RunGuard`)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from monai.utils import optional_import

from kvmonai.utils import KVMonaiError, as_flag

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["RUN_OUTPUTS", "RunGuard", "RunInUseError", "RunLock", "move_aside"]

logger = logging.getLogger(__name__)


class RunInUseError(KVMonaiError, RuntimeError):
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
    present = [Path(p) for p in paths if Path(p).exists()]
    if not present:
        return None
    dest = Path(run_dir) / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for path in present:
        shutil.move(str(path), str(dest / path.name))
    return dest


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock``: one training writes a run folder at a time.

    The kernel drops the lock when the process ends, even on SIGKILL, so a killed run never leaves the folder locked.
    The bundles name one lock per run in their config (``run_lock``), take it in the ``initialize`` step, before
    the handlers are built (MONAI's ``MLFlowHandler`` opens its store when built), hand it to :class:`RunGuard` by
    reference (``"lock": "@run_lock"``) and release it in ``finalize``. :meth:`acquire` and :meth:`release` may be
    called again (the second call does nothing), and a lock that is no longer referenced is released with its file.

    Args:
        folder: the run folder (created when the lock is taken).
        enabled: off on the other ranks of a distributed run (rank 0 writes the folder); then nothing is locked.
    """

    def __init__(self, folder: str | os.PathLike, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = as_flag("enabled", enabled)
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._handle is not None

    def acquire(self) -> RunLock:
        """Take the lock (nothing happens when it is held already or the lock is disabled); returns ``self``.

        Raises:
            RunInUseError: when another training holds the folder; its holder (pid and start time) is named.
        """
        if not self.enabled or self._handle is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".lock", "a+")  # noqa: SIM115 - held open for the run: the lock lives with it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunInUseError(
                f"{self.folder} is being written by another training ({holder}); nothing was touched. Wait for it "
                "to finish, or give this run its own output_dir (e.g. another seed or --output_dir)."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Drop the lock, if held."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunGuard:
    """Attach first to the trainer: one writer per run folder, no silent overwrite, and MLflow runs left usable.

    It holds the folder's :class:`RunLock`: the one the config took in its ``initialize`` step (``lock``), or its
    own, taken when training starts. A second training into the same folder fails at once with
    :class:`RunInUseError`, before anything of the first is touched; the lock is released when training ends or
    fails.

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
        lock: the run folder's lock, taken earlier (default: a :class:`RunLock` of ``output_dir``, taken at start).

    Raises:
        ValueError: when ``lock`` guards another folder than ``output_dir``.
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
        lock: RunLock | None = None,
    ) -> None:
        self.enabled = as_flag("enabled", enabled)
        self.output_dir = Path(output_dir)
        self.resume = as_flag("resume", resume)
        self.model_path = Path(model_path) if model_path else None
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.run_name = run_name or self.output_dir.name
        if lock is not None and lock.folder.resolve() != self.output_dir.resolve():
            raise ValueError(f"RunGuard: the lock guards {lock.folder}, not output_dir {output_dir}; pass its lock.")
        self.lock = lock if lock is not None else RunLock(self.output_dir)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        engine.add_event_handler(Events.COMPLETED, self.release)

    def release(self, engine: Any = None) -> None:
        """Drop the lock (at the end of training; the kernel drops it too when the process ends)."""
        self.lock.release()

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
        self.lock.acquire()  # held already when the config took it in initialize
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
