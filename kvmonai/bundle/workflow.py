"""Open a kvmonai bundle as a MONAI ``ConfigWorkflow`` (the class ``python -m monai.bundle run`` uses), or its network
as inference runs it, and the overrides that choose its device."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEVICE_ID", "bundle_network", "bundle_workflow", "device_overrides"]

#: the config id of the device a kvmonai bundle runs on, a plain name (its ``device`` is ``torch.device(@device_name)``)
DEVICE_ID = "device_name"


def device_overrides(device: Any) -> dict[str, str]:
    """The config overrides that run a kvmonai bundle on ``device``, e.g. ``{"device_name": "cuda:1"}``.

    The bundles hold the device as a plain name (``device_name``; by default CUDA when available, else the CPU) and
    turn it into their ``device`` once (``"device": "$torch.device(@device_name)"``), so an override is a value,
    not code.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Raises:
        ValueError: when torch does not read ``device`` as a device.
    """
    import torch

    try:
        name = str(torch.device(device))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r} ({e}).") from None
    return {DEVICE_ID: name}


def bundle_workflow(
    bundle: str | os.PathLike,
    configs: Sequence[str],
    workflow_type: str = "train",
    logging: bool = True,
    **overrides: Any,
):
    """An initialised ``ConfigWorkflow`` over ``bundle/configs/<configs>`` with ``overrides``.

    Args:
        bundle: the bundle folder.
        configs: config file names, merged in order (e.g. ``["train.json", "evaluate.json"]``).
        workflow_type: ``"train"`` or ``"infer"``.
        logging: apply the bundle's ``configs/logging.conf`` (off for callers with their own logging).
        overrides: config ids and values, as ``--id value`` on the command line.

    Returns:
        the workflow after ``initialize()``; call ``run()`` and ``finalize()``.
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle)
    files = [str(root / "configs" / c) for c in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if logging else False,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    return workflow


def bundle_network(bundle: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """The bundle's config parser and its network as inference runs it: on the CPU, weights loaded, rewrites applied.

    The config's own ``WeightsLoader`` and ``OptimizeForInference`` handlers are run, in their order, so that the
    network (and so its fingerprint) is the one ``runtime: openvino`` converts. ``kvmonai quantize``, ``kvmonai
    export`` and ``kvmonai benchmark`` load networks this way.

    Args:
        bundle: the bundle folder.
        overrides: config ids and values (e.g. ``{"weights": ..., "preset": "tiny"}``).

    Returns:
        the MONAI ``ConfigParser`` over ``configs/inference.json`` and the network (a ``torch.nn.Module`` in eval
        mode).

    Raises:
        CheckpointError: if the bundle's weights are missing or do not fit the network.
    """
    from monai.bundle import ConfigParser

    from kvmonai.bundle.loaders import OptimizeForInference, WeightsLoader

    root = Path(bundle)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), **device_overrides("cpu"), **(overrides or {})})
    network = parser.get_parsed_content("network")
    for handler in parser.get_parsed_content("handlers"):
        if isinstance(handler, (WeightsLoader, OptimizeForInference)):
            handler(None)
    return parser, network.eval()
