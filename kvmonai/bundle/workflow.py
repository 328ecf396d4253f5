"""Open a kvmonai bundle as a MONAI ``ConfigWorkflow``, the class ``python -m monai.bundle run`` uses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_workflow"]


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
