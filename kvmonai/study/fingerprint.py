"""What identifies a study run, so that a finished run is reused and a changed one trained again.

A run folder is reused (its ``result.json``, or its checkpoint resumed) only when its ``fingerprint.json`` equals
:func:`run_fingerprint` of the study's settings, bundle configs, data and kvmonai version, and its evaluation holds
the per-case counts the verdict needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvmonai.bundle import STUDY_CONFIG
from kvmonai.paths import bundle_name

__all__ = ["STUDY_RUN_CONFIGS", "data_fingerprint", "evaluated", "reusable", "run_fingerprint"]

#: the bundle configs a study run merges, in order: the recipe overlay after train.json (as MONAI merges a list of
#: config files), evaluation on top
STUDY_RUN_CONFIGS = {"train": ["train.json", STUDY_CONFIG], "evaluate": ["train.json", STUDY_CONFIG, "evaluate.json"]}


def data_fingerprint(datalist: Path) -> dict[str, Any]:
    """What identifies a study's data: the datalist's SHA-256 and the size and modification time of every volume.

    ``kvmonai prepare`` rewrites a volume whose source changed, so a changed volume changes its mtime; hashing every
    volume would cost a full read of the dataset on every study start.
    """
    import hashlib

    text = Path(datalist).read_bytes()
    entries = json.loads(text)
    files = sorted(
        {
            str(v[k])
            for split in ("training", "validation", "test")
            for v in entries.get(split, [])
            for k in ("image", "label")
            if k in v
        }
    )
    digest = hashlib.sha256()
    for name in files:
        path = Path(datalist).parent / name
        stat = path.stat() if path.exists() else None
        digest.update(f"{name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode())
    return {"datalist": hashlib.sha256(text).hexdigest(), "volumes": len(files), "files": digest.hexdigest()}


def run_fingerprint(
    cfg: Any, arch: str, attention: str, fold: int, seed: int, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything that shapes one run's result: settings, bundle configs, data and code version.

    ``data`` is :func:`data_fingerprint` of ``cfg.datalist`` when the caller has it already (one per study).

    A run folder is reused (its ``result.json``, or its checkpoint resumed) only when its ``fingerprint.json``
    equals this; otherwise its outputs are moved aside and the run is trained again.
    """
    import hashlib

    import kvmonai

    bundle = cfg.bundles / bundle_name(arch, attention)
    configs = hashlib.sha256()
    for name in STUDY_RUN_CONFIGS["evaluate"]:
        path = bundle / "configs" / name
        configs.update(path.read_bytes() if path.is_file() else b"")
    settings = {
        "arch": arch, "attention": attention, "fold": fold, "seed": seed, "preset": cfg.preset,
        "img_size": cfg.img_size, "epochs": cfg.epochs, "device": cfg.device,
        **{k: v for k, v in sorted(cfg.overrides.items())},
    }  # fmt: skip
    return {
        "settings": json.loads(json.dumps(settings, default=str)),
        "bundle_configs": configs.hexdigest(),
        "data": data if data is not None else data_fingerprint(cfg.datalist),
        "kvmonai": kvmonai.__version__,
    }


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "no fingerprint (made by an older kvmonai or interrupted before it was written)"
    changed = []
    for key, value in new["settings"].items():
        if old.get("settings", {}).get(key) != value:
            changed.append(f"{key} {old.get('settings', {}).get(key)!r} -> {value!r}")
    for key in ("bundle_configs", "data", "kvmonai"):
        if old.get(key) != new[key]:
            changed.append({"bundle_configs": "bundle configs", "data": "data", "kvmonai": "kvmonai version"}[key])
    return ", ".join(changed) or "nothing"


def reusable(run_dir: Path, fingerprint: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``run_dir`` was made with ``fingerprint``; else what changed."""
    path = run_dir / "fingerprint.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        old = None
    return old == fingerprint, _changes(old, fingerprint)


def evaluated(run_dir: Path) -> bool:
    """Whether the run's ``eval/per_case.csv`` holds the per-case counts the verdict needs (older runs lack them:
    they are evaluated again, from their finished checkpoint, without training)."""
    path = run_dir / "eval" / "per_case.csv"
    if not path.is_file():
        return False
    with open(path) as f:
        return "tp_stomach" in f.readline().split(",")
