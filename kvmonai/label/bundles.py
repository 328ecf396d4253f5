"""Find kvmonai bundles and open their configs for MONAI Label, without importing MONAI Label.

A served bundle is a folder ``<bundles>/<name>/`` with ``configs/inference.json``, ``configs/train.json`` and
``configs/metadata.json``; its weights are ``models/model.pt``. The app's ``--conf`` options choose the folder
(``bundles``), the bundles (``models``) and config overrides for all of them (``overrides``, e.g.
``preset=tiny,img_size=64``), see :class:`LabelAppSettings`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmonai.paths import BUNDLES_ENV, bundles_dir

__all__ = [
    "INFER_IDS",
    "TRAIN_IDS",
    "BundleSpec",
    "LabelAppSettings",
    "default_bundles_dir",
    "find_bundles",
    "open_bundle",
    "parse_overrides",
    "read_config",
    "study_loading",
]

#: ids the inference task reads from ``inference.json``
INFER_IDS: tuple[str, ...] = ("bundle_root", "device", "network_def", "preprocessing", "inferer", "postprocessing")
#: ids the training task reads or overrides in ``train.json``
TRAIN_IDS: tuple[str, ...] = (
    "bundle_root",
    "device",
    "device_name",
    "amp",
    "network_def",
    "network",
    "data_split",
    "loading",
    "max_epochs",
    "learning_rate",
    "mlflow",
    "output_dir",
    "train#handlers",
    "train#trainer",
    "validate#evaluator",
)
#: ``--conf`` keys of the kvmonai app (all others belong to MONAI Label)
_CONF_BUNDLES, _CONF_MODELS, _CONF_OVERRIDES = "bundles", "models", "overrides"
#: the ``overrides`` word for the study recipe's network settings
STUDY_RECIPE = "study"


def default_bundles_dir() -> Path:
    """The app's bundles folder when ``--conf bundles`` is not given: :func:`kvmonai.paths.bundles_dir`
    (``$KVMONAI_BUNDLES``, else the checkout's ``bundles/``).

    Raises:
        FileNotFoundError: when neither is there.
    """
    return bundles_dir()


def parse_overrides(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Parse the ``overrides`` option: a JSON object, or ``id=value`` pairs separated by commas.

    Values are read as JSON when they parse (``64`` -> int, ``true`` -> bool, ``[1, 2]`` -> list), else kept as
    strings (``tiny``). Ids may be nested (``inferer#sw_batch_size=4``). A value holding commas needs the JSON form.
    The word ``study`` stands for the network settings of the study's recipe (``preset`` and ``img_size`` of
    ``configs/study.json``), so models trained by ``kvmonai study`` are served as they were trained:
    ``--conf overrides study``.

    Args:
        text: the option's value (a mapping is copied as it is).

    Returns:
        the overrides, id -> value.

    Raises:
        ValueError: when the JSON does not parse, or a pair has no ``=`` or an empty id.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"--conf overrides: not valid JSON ({e}): {text!r}") from None
    out: dict[str, Any] = {}
    for pair in text.split(","):
        if pair.strip() == STUDY_RECIPE:  # the network settings the study trains with (configs/study.json)
            from kvmonai.bundle import STUDY_NETWORK_KEYS, study_recipe

            out.update({k: v for k, v in study_recipe().items() if k in STUDY_NETWORK_KEYS})
            continue
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--conf overrides: expected 'id=value' pairs separated by commas, got {pair!r}.")
        raw = raw.strip()
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def read_config(path: Path) -> dict[str, Any]:
    """Read one bundle config file (JSON) with errors that name the file.

    Args:
        path: the ``.json`` file.

    Returns:
        the parsed object.

    Raises:
        ValueError: when the file is missing, not JSON or not an object.
    """
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: not a kvmonai bundle folder (write the bundles with `kvmonai bundles`)."
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the config ({e}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def _has_id(config: Mapping[str, Any], id_: str) -> bool:
    node: Any = config
    for part in id_.split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _labels(metadata: Mapping[str, Any], path: Path) -> dict[str, int]:
    """Label name -> value, value ``c + 1`` for output channel ``c`` (``network_data_format.outputs.pred``)."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), None)
    channel_def = pred.get("channel_def") if isinstance(pred, Mapping) else None
    if not isinstance(channel_def, Mapping) or not channel_def:
        raise ValueError(f"{path}: network_data_format.outputs.pred.channel_def is missing; it names the organs.")
    try:
        names = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError:
        raise ValueError(f"{path}: channel_def keys must be channel numbers, got {list(channel_def)}.") from None
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: channel_def must number the channels 0..{len(names) - 1}, got {sorted(names)}.")
    return {names[c]: c + 1 for c in range(len(names))}


@dataclass(frozen=True)
class BundleSpec:
    """A bundle as served by the MONAI Label app.

    Attributes:
        name: the model name clients see (the folder name, e.g. ``setr_kv``).
        root: the bundle folder.
        labels: organ name -> label value in the returned label map (``1`` = first output channel).
        description: one line for clients.
        infer_overrides: config overrides that apply to ``inference.json``.
        train_overrides: config overrides that apply to ``train.json``.
    """

    name: str
    root: Path
    labels: dict[str, int]
    description: str
    infer_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        """``models/model.pt``: read by inference, written by training."""
        return self.root / "models" / "model.pt"

    @property
    def infer_config(self) -> Path:
        """``configs/inference.json``."""
        return self.root / "configs" / "inference.json"

    @property
    def train_config(self) -> Path:
        """``configs/train.json``."""
        return self.root / "configs" / "train.json"

    def missing_weights_message(self) -> str:
        """What to do when ``models/model.pt`` does not exist."""
        return (
            f"bundle {self.name!r} has no trained weights at {self.weights}. Train it from MONAI Label (3D Slicer: "
            f"'Train' with model {self.name}, or POST /train/{self.name}) on labelled studies, or with "
            f"'python -m monai.bundle run --config_file configs/train.json ...' in {self.root} (README 'Bundles'), "
            "or copy a model.pt trained with the same preset/img_size overrides there."
        )

    def parser(self, which: str = "inference"):
        """A MONAI ``ConfigParser`` over ``inference.json`` or ``train.json`` with ``bundle_root`` and the overrides.

        Args:
            which: ``"inference"`` or ``"train"``.

        Returns:
            the parser (nothing instantiated yet).

        Raises:
            ValueError: for another ``which``.
        """
        from monai.bundle import ConfigParser

        if which not in ("inference", "train"):
            raise ValueError(f"which must be 'inference' or 'train', got {which!r}.")
        infer = which == "inference"
        parser = ConfigParser()
        parser.read_config(str(self.infer_config if infer else self.train_config))
        parser.read_meta(str(self.root / "configs" / "metadata.json"))
        parser.update({"bundle_root": str(self.root), **(self.infer_overrides if infer else self.train_overrides)})
        return parser


def open_bundle(root: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> BundleSpec:
    """Check a bundle folder for what the MONAI Label tasks need and describe it.

    Args:
        root: the bundle folder.
        overrides: config overrides for all its configs; each id must exist in ``inference.json`` or
            ``train.json`` and is applied to the ones that have it.

    Returns:
        the bundle's :class:`BundleSpec`.

    Raises:
        ValueError: naming the file and the ids when a config is missing, lacks an id the tasks use, or an
            override id exists in neither config.
    """
    root = Path(root).resolve()
    name = root.name
    configs = root / "configs"
    infer = read_config(configs / "inference.json")
    train = read_config(configs / "train.json")
    metadata = read_config(configs / "metadata.json")
    checks = ((configs / "inference.json", infer, INFER_IDS), (configs / "train.json", train, TRAIN_IDS))
    for path, config, ids in checks:
        missing = [i for i in ids if not _has_id(config, i)]
        if missing:
            raise ValueError(f"{path}: bundle {name!r} lacks the ids {missing} that the MONAI Label app uses.")
    infer_over: dict[str, Any] = {}
    train_over: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key == "bundle_root":
            raise ValueError("--conf overrides: 'bundle_root' is set by the app (to the bundle folder).")
        in_infer, in_train = _has_id(infer, key), _has_id(train, key)
        if not (in_infer or in_train):
            raise ValueError(
                f"--conf overrides: {key!r} is not an id of {name}/configs/inference.json or train.json "
                "(e.g. preset, img_size, num_workers, inferer#sw_batch_size)."
            )
        if in_infer:
            infer_over[key] = value
        if in_train:
            train_over[key] = value
    labels = _labels(metadata, configs / "metadata.json")
    title = str(metadata.get("name") or name)
    arch = f"{infer.get('arch', '?')}/{infer.get('attention', '?')}"
    description = f"{title}: {arch} kvmonai bundle, 2.5D slice-by-slice segmentation of {', '.join(labels)}"
    return BundleSpec(name, root, labels, description, infer_over, train_over)


def find_bundles(bundles_dir: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """The bundle folders to serve.

    Args:
        bundles_dir: folder holding one folder per bundle.
        names: bundle names to serve; ``None``/empty or ``["all"]`` serves every folder with
            ``configs/inference.json``.

    Returns:
        the folders, in the order given (sorted for "all").

    Raises:
        ValueError: when ``bundles_dir`` is not a folder, a name is not a bundle there, or none is found.
    """
    base = Path(bundles_dir)
    if not base.is_dir():
        raise ValueError(f"bundles folder {base} does not exist (--conf bundles DIR or {BUNDLES_ENV}).")
    available = sorted(p.name for p in base.iterdir() if (p / "configs" / "inference.json").is_file())
    wanted = [n for n in (names or []) if n and n != "all"]
    if not wanted:
        if not available:
            raise ValueError(f"bundles folder {base} holds no bundle (no */configs/inference.json).")
        return [base / n for n in available]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ValueError(f"--conf models: {unknown} not found in {base}; available: {', '.join(available) or 'none'}.")
    return [base / n for n in dict.fromkeys(wanted)]


@dataclass(frozen=True)
class LabelAppSettings:
    """The kvmonai app's ``--conf`` options.

    Attributes:
        bundles_dir: ``--conf bundles DIR`` (default :func:`default_bundles_dir`).
        models: ``--conf models setr_kv,transunet_kv`` (default: all bundles in the folder).
        overrides: ``--conf overrides preset=small,img_size=128`` (or a JSON object), applied to every bundle.
    """

    bundles_dir: Path
    models: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> LabelAppSettings:
        """Read the options from MONAI Label's ``conf`` dictionary (values are strings).

        Args:
            conf: ``--conf key value`` pairs of ``monailabel start_server``.

        Returns:
            the settings.

        Raises:
            ValueError: when no bundles folder is given or found, or ``overrides`` does not parse.
        """
        conf = conf or {}
        raw_dir = conf.get(_CONF_BUNDLES)
        try:
            folder = Path(raw_dir) if raw_dir else default_bundles_dir()
        except FileNotFoundError as e:
            raise ValueError(f"{e} Or pass --conf bundles DIR.") from None
        models = tuple(m.strip() for m in str(conf.get(_CONF_MODELS) or "").split(",") if m.strip())
        return cls(folder.resolve(), models, parse_overrides(conf.get(_CONF_OVERRIDES)))

    def bundles(self) -> list[BundleSpec]:
        """Open every selected bundle.

        Returns:
            one :class:`BundleSpec` per bundle.

        Raises:
            ValueError: from :func:`find_bundles` and :func:`open_bundle`.
        """
        return [open_bundle(p, self.overrides) for p in find_bundles(self.bundles_dir, self.models)]


def study_loading(spec: BundleSpec, num_classes: int | None = None) -> list[dict[str, Any]]:
    """The ``loading`` transforms of ``train.json`` for studies saved by MONAI Label, as config entries.

    Studies come in any orientation and labels as single label maps; the bundle's recipe expects the prepared
    ``PLS`` volumes and 3-channel labels. The training task overrides the bundle's ``loading`` id (``LoadImaged`` +
    ``EnsureChannelFirstd``) with this list: ``kvmonai.data.LoadVolumed`` (the loader of ``inference.json``,
    reorienting image and label alike), then :class:`~kvmonai.label.transforms.LabelMapToChannelsd` on the label
    (values from each sample's ``label_values``). The rest of the preprocessing (``intensity``, resizing, sampling)
    is the bundle's own.

    Args:
        spec: the bundle (:func:`open_bundle` checked that its ``train.json`` has a ``loading`` id).
        num_classes: output channels (default: the number of labels).

    Returns:
        the list for the ``loading`` override.

    Raises:
        ValueError: when ``num_classes`` is not positive.
    """
    classes = len(spec.labels) if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be positive (one channel per organ), got {num_classes}.")
    return [
        {"_target_": "kvmonai.data.LoadVolumed", "keys": ["image", "label"]},
        {
            "_target_": "kvmonai.label.transforms.LabelMapToChannelsd",
            "keys": "label",
            "num_classes": classes,
            "values_key": "label_values",
        },
    ]
