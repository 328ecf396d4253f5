"""The prose of a bundle's README: the recipe and inference settings read from its configs, and the measurements.

:func:`recipe_values` reads every number and setting the README quotes where it acts in ``train.json`` and
``inference.json`` (the optimizer's ``lr``, the sampler's ``num_samples``...), through MONAI's
:class:`~monai.bundle.ConfigParser`, so the prose cannot drift from the configs; :func:`performance_text` writes the
Performance section from the measurement files of ``docs/measured``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ConfigItem

from kvmonai.paths import BUNDLE_TEMPLATE

__all__ = ["COMPLEXITY_TABLES", "performance_text", "recipe_values"]

#: the complexity tables of ``docs/measured`` the bundle READMEs quote, and the commands that write them
COMPLEXITY_TABLES: dict[str, str] = {
    "complexity_paper.csv": "kvmonai complexity --preset paper --format csv",
    "complexity_paper_timm.csv": "kvmonai complexity --preset paper --archs crossvit swin nextvit --format csv",
}


def performance_text(arch: str, attention: str, measured_dir: Path | None) -> str:
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


class _BundleConfig:
    """One bundle config as the README reads it, through MONAI's :class:`~monai.bundle.ConfigParser`.

    A setting is named by a path of keys (``"optimizer", "lr"``); in a list, the key is the class name of an entry's
    ``_target_`` (``"RandAffined"``), and a value that is a whole ``@id`` reference is followed there. The value is
    resolved by the parser (references replaced, nothing instantiated, no expression evaluated).

    Args:
        path: the ``.json`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.parser = ConfigParser()
        self.parser.read_config(str(self.path))
        self.parser.parse()

    def _follow(self, id_: str) -> str:
        """``id_``, or the id its value refers to (``"@id"``), followed to the end."""
        seen: list[str] = []
        node = self.parser.get(id_)
        while isinstance(node, str) and node.startswith("@"):
            ref = node[1:]
            if ref in seen:
                raise ValueError(f"{self.path}: the reference @{ref} refers to itself.")
            if ref not in self.parser:
                raise KeyError(f"{self.path}: no {ref} (referenced as @{ref}; the bundle README quotes it).")
            seen.append(ref)
            id_, node = ref, self.parser.get(ref)
        return id_

    def _id(self, *path: str) -> str:
        """The parser id of ``path`` (list entries found by their ``_target_``, references followed).

        Raises:
            KeyError: naming the missing setting.
        """
        id_ = ""
        for key in path:
            id_ = self._follow(id_)
            node = self.parser.get(id_)
            if isinstance(node, list):
                found = [i for i, t in enumerate(node) if isinstance(t, dict) and _short(t.get("_target_")) == key]
                key = str(found[0]) if found else ""
            if not key or not isinstance(node, (list, dict)) or (isinstance(node, dict) and key not in node):
                raise KeyError(f"{self.path}: no {'#'.join(path)} (the bundle README quotes it).")
            id_ = f"{id_}#{key}" if id_ else key
        return self._follow(id_)

    def raw(self, *path: str) -> Any:
        """The setting at ``path`` as written in the file (references followed, nothing resolved inside)."""
        return self.parser.get(self._id(*path))

    def get(self, *path: str) -> Any:
        """The setting at ``path``, resolved by the parser; an expression or component as its config.

        Raises:
            KeyError: naming the missing setting.
        """
        value = self.parser.get_parsed_content(self._id(*path), instantiate=False, eval_expr=False)
        return value.get_config() if isinstance(value, ConfigItem) else value

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


def _loss_text(config: _BundleConfig) -> str:
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


def _agree(train: _BundleConfig, infer: _BundleConfig, *path: str) -> Any:
    """A setting both configs must hold alike (what the network sees); returns train.json's.

    Raises:
        ValueError: when the two differ.
    """
    a, b = train.raw(*path), infer.raw(*path)
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
    ``channels_last`` differs by architecture and is filled in by :func:`~kvmonai.bundle.generate.render_bundle`
    (README and ``inference.json`` alike).

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
    configs = BUNDLE_TEMPLATE / "configs"
    train = _BundleConfig(train_config if train_config is not None else configs / "train.json")
    infer = _BundleConfig(inference_config if inference_config is not None else configs / "inference.json")
    for shared in ("preset", "img_size", "slice_offsets", "out_channels", "intensity"):
        _agree(train, infer, shared)
    return {**_input_values(train), **_training_values(train), **_inference_values(infer)}


def _input_values(train: _BundleConfig) -> dict[str, str]:
    """What the network sees and predicts: slices, intensity scaling, resizing, channels."""
    resize_mode = train.get("train", "volume_resize", "Resized", "mode")
    if not (isinstance(resize_mode, list) and len(resize_mode) == 2):
        raise ValueError(f"{train.path}: train#volume_resize Resized mode must be [image mode, label mode].")
    intensity = ("intensity", "ScaleIntensityRobustd")
    offsets = train.get("slice_offsets")
    return {
        **{k: str(train.get(k)) for k in ("preset", "img_size", "fold", "seed", "output_prior")},
        "in_channels": str(len(offsets)),
        "out_channels": str(train.get("out_channels")),
        "slice_list": ", ".join("z" if o == 0 else f"z{o:+d}" for o in offsets),
        "intensity_lower": _num(train.number(*intensity, "lower")),
        "intensity_upper": _num(train.number(*intensity, "upper")),
        "intensity_range": f"[{_num(train.number(*intensity, 'b_min'))}, {_num(train.number(*intensity, 'b_max'))}]",
        "image_resize_mode": str(resize_mode[0]),
        "label_resize": _label_resize_text(str(resize_mode[1])),
    }


def _training_values(train: _BundleConfig) -> dict[str, str]:
    """The training recipe: sampling, augmentation, loss, optimizer, schedule, validation."""
    rand = ("train", "random_transforms")
    affine = (*rand, "RandAffined")
    sampler = (*rand, "RandSliceSamplerd")
    key_metric = list(train.get("validate", "key_metric"))
    if len(key_metric) != 1:
        raise ValueError(f"{train.path}: validate#key_metric must hold one metric, got {key_metric}.")
    return {
        "amp": str(train.flag("amp")).lower(),
        "amp_text": _amp_text(train.flag("amp")),
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
    }


def _inference_values(infer: _BundleConfig) -> dict[str, str]:
    """The inference settings: inferer, threshold, precision, runtime, rewrites, outputs."""
    output_dtype = str(infer.get("postprocessing", "transforms", "SaveImaged", "output_dtype"))
    return {
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
