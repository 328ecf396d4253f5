"""Generate the MONAI bundles ``bundles/<arch>_<attention>/`` from the one template in ``kvmonai/bundle/template``.

Template files are copied with ``${name}`` placeholders filled in (JSON placeholders sit inside strings only, so the
template stays valid JSON). ``scripts/make_bundles.py`` writes all bundles (the 14 pairs of the five transformers,
the CNN reference and the timm backbones' pairs); :func:`check_bundles` reports every
difference between a bundle folder and what the generator makes (the tests fail on any).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvmonai.utils import write_text_atomic

__all__ = [
    "COMPLEXITY_TABLES",
    "TEMPLATE_DIR",
    "bundle_name",
    "check_bundles",
    "recipe_values",
    "render_bundle",
    "write_bundles",
]

TEMPLATE_DIR = Path(__file__).parent / "template"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
#: the complexity tables of ``docs/measured`` the bundle READMEs quote, and the commands that write them
COMPLEXITY_TABLES: dict[str, str] = {
    "complexity_paper.csv": "kvmonai complexity --preset paper --format csv",
    "complexity_paper_timm.csv": "kvmonai complexity --preset paper --archs crossvit swin nextvit --format csv",
}
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
    for name, command in COMPLEXITY_TABLES.items():
        table = measured_dir / name if measured_dir else None
        if table is None or not table.is_file():
            continue
        with open(table, newline="") as f:
            rows = {(r["arch"], r["attention"]): r for r in csv.DictReader(f)}
        if (arch, attention) in rows:
            lines = [
                f"Complexity at the paper preset (224x224, 3 input channels, 3 classes; batch 1), from `{command}`:",
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
            break
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


class _Config:
    """One bundle config (JSON) as the README generator reads it: ids by path, ``@id`` references followed.

    Args:
        path: the ``.json`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import json

        self.path = Path(path)
        self.data = json.loads(self.path.read_text())

    def _follow(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        while isinstance(node, str) and node.startswith("@"):
            ref = node[1:]
            if ref in seen:
                raise ValueError(f"{self.path}: the reference @{ref} refers to itself.")
            seen, node = (*seen, ref), self.data
            for part in ref.split("#"):
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise KeyError(f"{self.path}: no {ref} (referenced as @{ref}; the bundle README quotes it).")
        return node

    def get(self, *path: str) -> Any:
        """The value at ``path``; in a list, the entry whose ``_target_`` ends with the key (``"RandAffined"``).

        Raises:
            KeyError: naming the missing id.
        """
        node: Any = self.data
        for key in path:
            node = self._follow(node)
            if isinstance(node, list):
                node = next((t for t in node if isinstance(t, dict) and _short(t.get("_target_")) == key), None)
            elif isinstance(node, dict):
                node = node.get(key)
            else:
                node = None
            if node is None:
                raise KeyError(f"{self.path}: no {'#'.join(path)} (the bundle README quotes it).")
        return self._follow(node)

    def number(self, *path: str) -> float:
        """:meth:`get` as a number.

        Raises:
            ValueError: when the value is not a plain number (e.g. a ``$`` expression, which the README cannot quote).
        """
        value = self.get(*path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{self.path}: {'#'.join(path)} is {value!r}; the bundle README quotes it, so write a plain number."
            )
        return value

    def flag(self, *path: str) -> bool:
        """:meth:`get` as a boolean (a JSON ``true``/``false`` or ``"$True"``/``"$False"``).

        Raises:
            ValueError: for anything else.
        """
        value = self.get(*path)
        if isinstance(value, str) and value in ("$True", "$False"):
            return value == "$True"
        if not isinstance(value, bool):
            raise ValueError(f"{self.path}: {'#'.join(path)} is {value!r}; the bundle README quotes it as true/false.")
        return value


def _short(target: Any) -> str:
    """The class name of a ``_target_`` (``"torch.optim.AdamW"`` -> ``"AdamW"``)."""
    return str(target or "").rsplit(".", 1)[-1]


def _num(value: float) -> str:
    return f"{value:g}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}"


def _loss_text(config: _Config) -> str:
    """The loss as the README states it, from ``train.json``'s ``loss``."""
    name = _short(config.get("loss", "_target_"))
    if name != "DiceFocalLoss":
        return f"`{name}`"
    gamma = config.number("loss", "gamma")
    focal = "binary cross-entropy" if gamma == 0 else f"focal loss (gamma {_num(gamma)})"
    outputs = "sigmoid" if config.flag("loss", "sigmoid") else "softmax"
    batch = ", Dice over the whole batch" if config.flag("loss", "batch") else ""
    weights = f"{_num(config.number('loss', 'lambda_dice'))} / {_num(config.number('loss', 'lambda_focal'))}"
    return f"Dice + {focal} on {outputs} outputs (`DiceFocalLoss`, weights {weights}{batch})"


def _label_resize_text(mode: str) -> str:
    if mode == "area":
        return "labels by area averaging, so a target is the fraction of the pixel an organ covers"
    return f"labels `{mode}`"


def _amp_text(amp: bool) -> str:
    return "true (bf16 autocast where the hardware runs it natively, fp32 elsewhere)" if amp else "false (fp32)"


def _precision_text(precision: str) -> str:
    if precision == "auto":
        return "`auto` (bf16 where the hardware runs it natively, fp32 elsewhere)"
    return f"`{precision}`"


def _scale_range_text(value: Any, scale: float = 100.0, unit: str = " %") -> str:
    """A MONAI range argument (``f`` meaning ``±f``, or ``[low, high]``) as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"±{value * scale:g}{unit}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{value[0] * scale:g} to {value[1] * scale:g}{unit}"
    raise ValueError(f"expected a number or a [low, high] pair for the README, got {value!r}.")


def _agree(train: _Config, infer: _Config, *path: str) -> Any:
    """A setting both configs must hold alike (what the network sees); returns train.json's.

    Raises:
        ValueError: when the two differ.
    """
    a, b = train.get(*path), infer.get(*path)
    if a != b:
        raise ValueError(
            f"{infer.path}: {'#'.join(path)} is {b!r} but {train.path} has {a!r}; inference must prepare volumes as "
            "training did, so make them equal."
        )
    return a


def recipe_values(
    train_config: str | os.PathLike | None = None, inference_config: str | os.PathLike | None = None
) -> dict[str, str]:
    """The recipe numbers and settings the bundle README quotes, read from the configs so the prose cannot drift.

    Each value is read where it acts (the optimizer's ``lr``, the sampler's ``num_samples``, the validation
    handler's ``interval``...), following ``@id`` references; the training recipe comes from ``train.json``, the
    inference settings (inferer, threshold, precision, ``fuse``, output type) from ``inference.json``.
    ``channels_last`` differs by architecture and is filled in by :func:`render_bundle` (README and
    ``inference.json`` alike).

    Args:
        train_config: ``train.json`` (default: the template's).
        inference_config: ``inference.json`` (default: the template's).

    Returns:
        placeholder name -> text.

    Raises:
        KeyError: when a config lacks one of the settings (the message names it).
        ValueError: when a quoted setting is not a plain value (a ``$`` expression), or the two configs disagree on
            what the network sees (``preset``, ``img_size``, ``slice_offsets``, ``out_channels``, ``intensity``).
    """
    import math

    configs = TEMPLATE_DIR / "configs"
    train = _Config(train_config if train_config is not None else configs / "train.json")
    infer = _Config(inference_config if inference_config is not None else configs / "inference.json")
    for shared in ("preset", "img_size", "slice_offsets", "out_channels", "intensity"):
        _agree(train, infer, shared)

    rand = ("train", "random_transforms")
    affine = (*rand, "RandAffined")
    sampler = (*rand, "RandSliceSamplerd")
    resize_mode = train.get("train", "volume_resize", "Resized", "mode")
    if not (isinstance(resize_mode, list) and len(resize_mode) == 2):
        raise ValueError(f"{train.path}: train#volume_resize Resized mode must be [image mode, label mode].")
    key_metric = list(train.get("validate", "key_metric"))
    if len(key_metric) != 1:
        raise ValueError(f"{train.path}: validate#key_metric must hold one metric, got {key_metric}.")
    intensity = ("intensity", "ScaleIntensityRobustd")
    offsets = train.get("slice_offsets")
    output_dtype = str(infer.get("postprocessing", "transforms", "SaveImaged", "output_dtype"))
    return {
        **{k: str(train.get(k)) for k in ("preset", "img_size", "fold", "seed", "output_prior")},
        "amp": str(train.flag("amp")).lower(),
        "amp_text": _amp_text(train.flag("amp")),
        "in_channels": str(len(offsets)),
        "out_channels": str(train.get("out_channels")),
        "slice_list": ", ".join("z" if o == 0 else f"z{o:+d}" for o in offsets),
        "intensity_lower": _num(train.number(*intensity, "lower")),
        "intensity_upper": _num(train.number(*intensity, "upper")),
        "intensity_range": f"[{_num(train.number(*intensity, 'b_min'))}, {_num(train.number(*intensity, 'b_max'))}]",
        "image_resize_mode": str(resize_mode[0]),
        "label_resize": _label_resize_text(str(resize_mode[1])),
        "max_epochs": str(train.get("train", "trainer", "max_epochs")),
        "volumes_per_batch": str(train.get("train", "dataloader", "batch_size")),
        "slices_per_volume": str(train.get(*sampler, "num_samples")),
        "positive_pct": _pct(train.number(*sampler, "pos_fraction")),
        "affine_prob": _num(train.number(*affine, "prob")),
        "rotate_deg": f"{math.degrees(train.number(*affine, 'rotate_range')):.0f}",
        "scale_pct": _pct(train.number(*affine, "scale_range")),
        "translate_px": str(train.get(*affine, "translate_range")),
        "intensity_scale": _scale_range_text(train.get(*rand, "RandScaleIntensityd", "factors")),
        "intensity_scale_prob": _num(train.number(*rand, "RandScaleIntensityd", "prob")),
        "noise_std": _num(train.number(*rand, "RandGaussianNoised", "std")),
        "noise_prob": _num(train.number(*rand, "RandGaussianNoised", "prob")),
        "loss": _loss_text(train),
        "optimizer": _short(train.get("optimizer", "_target_")),
        "learning_rate": str(train.get("optimizer", "lr")),
        "weight_decay": str(train.get("optimizer", "weight_decay")),
        "lr_scheduler": _short(train.get("lr_scheduler", "_target_")),
        "warmup_pct": _pct(train.number("lr_scheduler", "pct_start")),
        "anneal": {"cos": "cosine", "linear": "linear"}.get(str(train.get("lr_scheduler", "anneal_strategy")), "?"),
        "lr_step": "epoch" if train.flag("train", "handlers", "LrScheduleHandler", "epoch_level") else "iteration",
        "val_interval": str(train.get("train", "handlers", "PeriodicAndFinalValidation", "interval")),
        "key_metric": key_metric[0],
        "other_metrics": ", ".join(f"`{m}`" for m in train.get("validate", "additional_metrics")) or "none",
        "val_threshold": _num(train.number("validate", "postprocessing", "transforms", "AsDiscreted", "threshold")),
        "val_inferer": _short(train.get("validate", "inferer", "_target_")),
        "val_sw_batch_size": str(train.get("validate", "inferer", "sw_batch_size")),
        "infer_inferer": _short(infer.get("inferer", "_target_")),
        "infer_sw_batch_size": str(infer.get("inferer", "sw_batch_size")),
        "threshold": _num(infer.number("postprocessing", "transforms", "AsDiscreted", "threshold")),
        "precision": _precision_text(str(infer.get("inferer", "precision"))),
        "runtime": str(infer.get("runtime")),
        "fuse": str(infer.flag("handlers", "OptimizeForInference", "fuse")),
        "output_dtype": output_dtype.removeprefix("$torch."),
        "dicom_seg": str(infer.get("postprocessing", "transforms", "SaveDicomSegd", "mode")),
        "seg_labels": ", ".join(str(x) for x in infer.get("postprocessing", "transforms", "SaveDicomSegd", "labels")),
    }


def render_bundle(arch: str, attention: str, measured_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The files of one bundle: ``relative path -> text``.

    Args:
        arch: architecture name.
        attention: attention variant.
        measured_dir: folder with measurement files (:data:`COMPLEXITY_TABLES`) for the README's Performance section.

    Raises:
        ValueError: for an unknown pair.
    """
    from kvmonai.networks import ATTENTION_REGISTRY, lookup

    info = lookup(arch)
    if attention not in info.attentions:
        raise ValueError(f"no bundle for {arch!r} with {attention!r}; attentions: {info.attentions}.")
    att = ATTENTION_REGISTRY[attention]
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
        "requires_note": _requires_note(info.requires),
        **recipe_values(),
    }
    files: dict[str, str] = {}
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        if path.is_file():
            files[path.relative_to(TEMPLATE_DIR).as_posix()] = _fill(path.read_text(), values, path)
    if info.requires:
        files["configs/metadata.json"] = _with_packages(files["configs/metadata.json"], info.requires)
    return files


def _requires_note(requires: Mapping[str, str]) -> str:
    """The README sentence on the extra packages a network needs (empty when it needs none)."""
    if not requires:
        return ""
    names = ", ".join(f"{name} {version}" for name, version in requires.items())
    extras = ",".join(requires)
    return f" This network also needs {names} (`pip install 'kvmonai[{extras}]'`)."


def _with_packages(metadata: str, requires: Mapping[str, str]) -> str:
    """``metadata.json`` text with ``requires`` added to ``required_packages_version`` after kvmonai's entry.

    The entries are inserted as lines, so the template's layout stays as it is.

    Raises:
        ValueError: if the template has no ``"kvmonai"`` entry there, or the result is not the expected JSON.
    """
    import json

    match = re.search(r'^( *)"kvmonai": "[^"]*",\n', metadata, flags=re.MULTILINE)
    if match is None:
        raise ValueError('the metadata.json template needs a "kvmonai" line in required_packages_version.')
    lines = "".join(f'{match.group(1)}"{name}": "{version}",\n' for name, version in requires.items())
    text = metadata[: match.end()] + lines + metadata[match.end() :]
    if {k: json.loads(text)["required_packages_version"].get(k) for k in requires} != dict(requires):
        raise ValueError("the packages were not added to required_packages_version of metadata.json.")
    return text


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
    for arch, attention in pairs or all_pairs(references=True, extra=True):
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
    expected_names = {bundle_name(a, t) for a, t in all_pairs(references=True, extra=True)}
    present = {p.name for p in Path(root).iterdir() if p.is_dir()} if Path(root).is_dir() else set()
    problems += [f"{name}: bundle folder missing" for name in sorted(expected_names - present)]
    problems += [f"{name}: not a generated bundle" for name in sorted(present - expected_names)]
    for arch, attention in all_pairs(references=True, extra=True):
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
