"""Generate the MONAI bundles ``bundles/<arch>_<attention>/`` from the one template in ``kvmonai/bundle/template``.

Template files are copied with ``${name}`` placeholders filled in (JSON placeholders sit inside strings only, so the
template stays valid JSON). ``scripts/make_bundles.py`` writes all 14 bundles; :func:`check_bundles` reports every
difference between a bundle folder and what the generator makes (the tests fail on any).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

from kvmonai.utils import write_text_atomic

__all__ = ["TEMPLATE_DIR", "bundle_name", "check_bundles", "recipe_values", "render_bundle", "write_bundles"]

TEMPLATE_DIR = Path(__file__).parent / "template"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
#: files of a generated bundle that the generator owns (training outputs such as models/ and runs/ are not)
_GENERATED_DIRS = ("configs", "docs")

def bundle_name(arch: str, attention: str) -> str:
    """Folder name of a bundle, e.g. ``setr_kv``."""
    return f"{arch}_{attention}"


def _fill(text: str, values: dict[str, str], source: Path) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template {source} uses ${{{key}}}, which the generator does not define.")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def _performance(arch: str, attention: str, measured_dir: Path | None) -> str:
    """Markdown for the Performance section, from measurement files produced by kvmonai commands."""
    parts: list[str] = []
    table = measured_dir / "complexity_paper.csv" if measured_dir else None
    if table is not None and table.is_file():
        with open(table, newline="") as f:
            rows = {(r["arch"], r["attention"]): r for r in csv.DictReader(f)}
        if (arch, attention) in rows:
            lines = [
                "Complexity at the paper preset (224x224, 3 input channels, 3 classes; batch 1), from "
                "`kvmonai complexity --preset paper --format csv`:",
                "",
                "| attention | parameters | Δ vs QKV | GMACs | Δ vs QKV |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            for att in dict.fromkeys(("qkv", attention)):
                r = rows[(arch, att)]
                lines.append(
                    f"| {att} | {int(r['params']):,} | {float(r['params_change_pct']):+.2f}% "
                    f"| {int(r['macs']) / 1e9:.3f} | {float(r['macs_change_pct']):+.2f}% |"
                )
            parts.append("\n".join(lines))
    study = measured_dir / "study_synthetic_small.csv" if measured_dir else None
    if study is not None and study.is_file():
        with open(study, newline="") as f:
            found = [r for r in csv.DictReader(f) if (r["arch"], r["attention"]) == (arch, attention)]
        if found:
            r = found[0]
            parts.append(
                "Short run on the **synthetic** stand-in (the default study of `./scripts/demo.sh`; its settings, "
                "machine and time are in the kvmonai README; numbers on synthetic data are no evidence about real "
                "MRI): "
                f"validation Jaccard {float(r['jaccard']):.3f}, weighted Jaccard {float(r['weighted_jaccard']):.3f}, "
                f"Dice large bowel / small bowel / stomach {float(r['dice_large_bowel']):.3f} / "
                f"{float(r['dice_small_bowel']):.3f} / {float(r['dice_stomach']):.3f}, competition score "
                f"{float(r['score']):.3f}, {float(r['latency_ms']):.1f} ms per slice (batch 1, CPU)."
            )
    if not parts:
        parts.append("No measurement is recorded for this bundle yet (`kvmonai complexity` writes it).")
    parts.append(
        "Accuracy on real data depends on the data and the training budget; `kvmonai study --data <folder>` trains "
        "and evaluates every pair with the same recipe and writes the comparison table."
    )
    return "\n\n".join(parts)


def recipe_values(train_config: str | os.PathLike = TEMPLATE_DIR / "configs" / "train.json") -> dict[str, str]:
    """The recipe numbers the bundle README quotes, read from ``train.json`` so the prose cannot drift from it.

    Raises:
        KeyError: when ``train.json`` lacks one of the settings (the message names it).
    """
    import json
    import math

    config = json.loads(Path(train_config).read_text())

    def find(*path: str) -> object:
        node: object = config
        for key in path:
            if isinstance(node, list):
                node = next((t for t in node if isinstance(t, dict) and t.get("_target_") == key), None)
            elif isinstance(node, dict):
                node = node.get(key)
            if node is None:
                raise KeyError(f"{train_config}: no {'#'.join(path)} (the bundle README quotes it).")
        return node

    affine = "RandAffined"
    plain = ("preset", "img_size", "fold", "seed", "max_epochs", "val_interval", "volumes_per_batch")
    plain += ("slices_per_volume", "learning_rate", "weight_decay", "output_prior")
    return {
        **{k: str(find(k)) for k in plain},
        "amp": str(find("amp")).lower(),
        "positive_pct": f"{100 * float(find('positive_fraction')):g}",
        "warmup_pct": f"{100 * float(find('lr_scheduler', 'pct_start')):g}",
        "affine_prob": f"{float(find('train', 'random_transforms', affine, 'prob')):g}",
        "rotate_deg": f"{math.degrees(float(find('train', 'random_transforms', affine, 'rotate_range'))):.0f}",
        "scale_pct": f"{100 * float(find('train', 'random_transforms', affine, 'scale_range')):g}",
        "translate_px": str(find("train", "random_transforms", affine, "translate_range")),
    }


def render_bundle(arch: str, attention: str, measured_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The files of one bundle: ``relative path -> text``.

    Args:
        arch: architecture name.
        attention: attention variant.
        measured_dir: folder with measurement files (``complexity_paper.csv``) for the README's Performance section.

    Raises:
        ValueError: for an unknown pair.
    """
    from kvmonai.networks import ATTENTIONS, lookup

    info = lookup(arch)
    if attention not in info.attentions:
        raise ValueError(f"no bundle for {arch!r} with {attention!r}; attentions: {info.attentions}.")
    att = ATTENTIONS[attention]
    values = {
        "arch": arch,
        "attention": attention,
        "bundle_name": bundle_name(arch, attention),
        "arch_title": info.title,
        "arch_reference": info.reference,
        "arch_reference_short": info.short,
        "attention_title": att.title,
        "attention_description": att.description,
        "performance": _performance(arch, attention, Path(measured_dir) if measured_dir else None),
        "channels_last": "True" if info.channels_last else "False",
        **recipe_values(),
    }
    files: dict[str, str] = {}
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        if path.is_file():
            files[path.relative_to(TEMPLATE_DIR).as_posix()] = _fill(path.read_text(), values, path)
    return files


def write_bundles(
    root: str | os.PathLike,
    pairs: Sequence[tuple[str, str]] | None = None,
    measured_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write (or refresh) bundles under ``root``; files the template no longer has are removed from the generated
    folders (``configs/``, ``docs/``), training outputs (``models/``, ``runs/``) are left alone.

    Returns:
        the bundle folders.
    """
    from kvmonai.networks import pairs as all_pairs

    out = []
    for arch, attention in pairs or all_pairs(references=True):
        folder = Path(root) / bundle_name(arch, attention)
        files = render_bundle(arch, attention, measured_dir)
        for rel, text in files.items():
            target = folder / rel
            if not target.is_file() or target.read_text() != text:
                write_text_atomic(target, text)
        for sub in _GENERATED_DIRS:
            for stale in (folder / sub).rglob("*") if (folder / sub).is_dir() else []:
                if stale.is_file() and stale.relative_to(folder).as_posix() not in files:
                    stale.unlink()
        out.append(folder)
    return out


def check_bundles(root: str | os.PathLike, measured_dir: str | os.PathLike | None = None) -> list[str]:
    """Differences between the bundles under ``root`` and what the generator makes (empty when identical)."""
    from kvmonai.networks import pairs as all_pairs

    problems = []
    expected_names = {bundle_name(a, t) for a, t in all_pairs(references=True)}
    present = {p.name for p in Path(root).iterdir() if p.is_dir()} if Path(root).is_dir() else set()
    problems += [f"{name}: bundle folder missing" for name in sorted(expected_names - present)]
    problems += [f"{name}: not a generated bundle" for name in sorted(present - expected_names)]
    for arch, attention in all_pairs(references=True):
        folder = Path(root) / bundle_name(arch, attention)
        if not folder.is_dir():
            continue
        files = render_bundle(arch, attention, measured_dir)
        for rel, text in files.items():
            target = folder / rel
            if not target.is_file():
                problems.append(f"{folder.name}/{rel}: missing")
            elif target.read_text() != text:
                problems.append(f"{folder.name}/{rel}: differs from the template")
        for sub in _GENERATED_DIRS:
            for extra in (folder / sub).rglob("*") if (folder / sub).is_dir() else []:
                if extra.is_file() and extra.relative_to(folder).as_posix() not in files:
                    problems.append(f"{folder.name}/{extra.relative_to(folder).as_posix()}: not in the template")
    return problems
