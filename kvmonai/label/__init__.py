"""MONAI Label integration: serve kvmonai bundles for interactive annotation in 3D Slicer or OHIF.

Run it with ``scripts/label_server.sh [studies] [--conf key value ...]`` (README "MONAI Label (3D Slicer)"). The
app folder that ``monailabel start_server --app`` takes is :data:`APP_DIR` (``kvmonai/label/app``).

Modules that need monailabel (installed only in the separate ``.venv-label`` of ``scripts/label_env.sh``):
:mod:`~kvmonai.label.infer` (:class:`KVBundleInferTask`), :mod:`~kvmonai.label.train` (:class:`KVBundleTrainTask`)
and :mod:`~kvmonai.label.application` (:class:`KVMonaiLabelApp`). The others need MONAI only:
:mod:`~kvmonai.label.bundles` (finding bundles, ``--conf`` options), :mod:`~kvmonai.label.transforms` (label map
conversions), :mod:`~kvmonai.label.datalist` and :mod:`~kvmonai.label.handlers`. Names are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvmonai.utils import lazy_exports

if TYPE_CHECKING:
    from kvmonai.label.application import KVMonaiLabelApp
    from kvmonai.label.bundles import (
        BundleSpec,
        LabelAppSettings,
        default_bundles_dir,
        find_bundles,
        open_bundle,
        parse_overrides,
        study_loading,
    )
    from kvmonai.label.datalist import label_values, split_items
    from kvmonai.label.handlers import TrainStatsWriter
    from kvmonai.label.infer import KVBundleInferTask, MissingWeightsError
    from kvmonai.label.pacs import (
        LoadedSeries,
        OrthancServer,
        PacsError,
        expand_sources,
        iter_series,
        load_studies,
        store_series,
    )
    from kvmonai.label.train import KVBundleTrainTask
    from kvmonai.label.transforms import ChannelsToLabelMapd, LabelMapToChannelsd, RestoreInputGridd

#: the MONAI Label app folder (holds ``main.py``)
APP_DIR: Path = Path(__file__).resolve().parent / "app"

_SUBMODULE: dict[str, str] = {
    "KVMonaiLabelApp": "application",
    "BundleSpec": "bundles",
    "LabelAppSettings": "bundles",
    "default_bundles_dir": "bundles",
    "find_bundles": "bundles",
    "open_bundle": "bundles",
    "parse_overrides": "bundles",
    "study_loading": "bundles",
    "label_values": "datalist",
    "split_items": "datalist",
    "TrainStatsWriter": "handlers",
    "KVBundleInferTask": "infer",
    "MissingWeightsError": "infer",
    "LoadedSeries": "pacs",
    "OrthancServer": "pacs",
    "PacsError": "pacs",
    "expand_sources": "pacs",
    "iter_series": "pacs",
    "load_studies": "pacs",
    "store_series": "pacs",
    "KVBundleTrainTask": "train",
    "ChannelsToLabelMapd": "transforms",
    "LabelMapToChannelsd": "transforms",
    "RestoreInputGridd": "transforms",
}

__all__ = [
    "APP_DIR",
    "BundleSpec",
    "ChannelsToLabelMapd",
    "KVBundleInferTask",
    "KVBundleTrainTask",
    "KVMonaiLabelApp",
    "LabelAppSettings",
    "LabelMapToChannelsd",
    "LoadedSeries",
    "MissingWeightsError",
    "OrthancServer",
    "PacsError",
    "RestoreInputGridd",
    "TrainStatsWriter",
    "default_bundles_dir",
    "expand_sources",
    "find_bundles",
    "iter_series",
    "label_values",
    "load_studies",
    "open_bundle",
    "parse_overrides",
    "split_items",
    "store_series",
    "study_loading",
]


__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE, __all__)
