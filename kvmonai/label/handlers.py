"""Training statistics in the form MONAI Label reports under ``train_stats`` (3D Slicer shows its progress bar)."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from kvmonai.utils import write_text_atomic

__all__ = ["TrainStatsWriter"]

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _last_loss(output: Any) -> float | None:
    """The loss of the last iteration from a MONAI trainer's output (a dict, or a list of per-sample dicts)."""
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    loss = item.get("loss") if isinstance(item, dict) else None
    return float(loss) if loss is not None else None


class TrainStatsWriter:
    """Attach to the trainer: after every epoch write the run's statistics atomically to a JSON file.

    Keys (those MONAI Label clients read): ``epoch``, ``total_epochs``, ``start_ts``, ``current_time`` (or
    ``total_time`` after the last epoch), ``best_metric`` (the validation key metric, Jaccard for kvmonai bundles),
    ``best_metric_epoch``, ``key_metric_name``, ``train`` and ``eval`` (metrics of the last epoch), ``run_dir``.

    Args:
        path: the JSON file (e.g. the task's ``train_stats.json``).
        evaluator: the validation evaluator (``@validate#evaluator``); ``None`` leaves the metric fields out.
        run_dir: folder of this run's outputs, recorded in the file.
    """

    def __init__(self, path: str | os.PathLike, evaluator: Any = None, run_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self.evaluator = evaluator
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.start_ts = time.time()

    def attach(self, engine: Any) -> None:
        """Register on ``engine`` (the trainer).

        Args:
            engine: an ignite engine.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def started(self, engine: Any) -> None:
        """Start the clock."""
        self.start_ts = time.time()

    def stats(self, engine: Any) -> dict[str, Any]:
        """The statistics after the engine's current epoch.

        Args:
            engine: the trainer.

        Returns:
            a JSON-serialisable dictionary.
        """
        state = engine.state
        elapsed = str(timedelta(seconds=int(time.time() - self.start_ts)))
        done = state.epoch >= state.max_epochs
        out: dict[str, Any] = {
            "epoch": int(state.epoch),
            "total_epochs": int(state.max_epochs),
            "start_ts": int(self.start_ts),
            "total_time" if done else "current_time": elapsed,
            "train": {"metrics": _plain(dict(state.metrics)), "loss": _last_loss(state.output)},
        }
        if self.run_dir:
            out["run_dir"] = self.run_dir
        ev = self.evaluator
        if ev is not None and getattr(ev, "state", None) is not None:
            out["best_metric"] = _plain(getattr(ev.state, "best_metric", None))
            out["best_metric_epoch"] = _plain(getattr(ev.state, "best_metric_epoch", None))
            out["key_metric_name"] = getattr(ev.state, "key_metric_name", None)
            out["eval"] = {"metrics": _plain(dict(ev.state.metrics))}
        return out

    def __call__(self, engine: Any) -> None:
        """Write the file.

        Args:
            engine: the trainer.
        """
        write_text_atomic(self.path, json.dumps(self.stats(engine), indent=2))
