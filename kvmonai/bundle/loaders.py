"""Engine handlers that prepare the network when an engine starts: load its weights (a bundle's own or pretrained
ones) and apply the exact inference rewrites."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from kvmonai.networks import load_weights, unwrap_model
from kvmonai.utils import as_flag, write_text_atomic

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["OptimizeForInference", "PretrainedLoader", "WeightsLoader"]

logger = logging.getLogger(__name__)


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
        load_weights(unwrap_model(self.network), self.path)
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

        self.report = load_pretrained(unwrap_model(self.network), self.path, strict=self.strict)
        logger.info(self.report.summary())
        if self.enabled and self.report_path is not None:
            write_text_atomic(self.report_path, self.report.summary() + "\n")
