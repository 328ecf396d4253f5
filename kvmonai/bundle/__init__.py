"""Runtime pieces of the kvmonai MONAI bundles and the bundle generator.

One module per idea: :mod:`~kvmonai.bundle.training` (training-state handlers: epoch checkpoints, resume, best model,
last-epoch validation), :mod:`~kvmonai.bundle.run_folder` (the run folder's lock and guard),
:mod:`~kvmonai.bundle.recording` (settings, metrics CSV, curves), :mod:`~kvmonai.bundle.loaders` (weights and
inference rewrites at engine start), :mod:`~kvmonai.bundle.settings`, :mod:`~kvmonai.bundle.recipe` (the study's
recipe, ``configs/study.json``), :mod:`~kvmonai.bundle.evaluation`, :mod:`~kvmonai.bundle.workflow` (a bundle as a
workflow or a network, and its device), and the generator (:mod:`~kvmonai.bundle.generate`,
:mod:`~kvmonai.bundle.readme`). Bundle configs name these classes as ``kvmonai.bundle.<Name>``. Checkpoint files
(:mod:`kvmonai.networks.checkpoint`) are re-exported.
"""

from kvmonai.bundle.evaluation import EvaluationReport
from kvmonai.bundle.generate import check_bundles, write_bundles
from kvmonai.bundle.loaders import OptimizeForInference, PretrainedLoader, WeightsLoader
from kvmonai.bundle.recipe import STUDY_CONFIG, STUDY_NETWORK_KEYS, study_recipe
from kvmonai.bundle.recording import RunRecorder, read_metrics_csv
from kvmonai.bundle.run_folder import RUN_OUTPUTS, RunGuard, RunInUseError, RunLock, move_aside
from kvmonai.bundle.settings import SettingsError, check_train_settings
from kvmonai.bundle.training import (
    BestModelSaver,
    EpochCheckpoint,
    PeriodicAndFinalValidation,
    ResumeFromCheckpoint,
)
from kvmonai.bundle.workflow import bundle_network, bundle_workflow, device_overrides
from kvmonai.networks import CheckpointError, load_checkpoint, load_weights, save_atomic

__all__ = [
    "RUN_OUTPUTS",
    "STUDY_CONFIG",
    "STUDY_NETWORK_KEYS",
    "BestModelSaver",
    "CheckpointError",
    "EpochCheckpoint",
    "EvaluationReport",
    "OptimizeForInference",
    "PeriodicAndFinalValidation",
    "PretrainedLoader",
    "ResumeFromCheckpoint",
    "RunGuard",
    "RunInUseError",
    "RunLock",
    "RunRecorder",
    "SettingsError",
    "WeightsLoader",
    "bundle_network",
    "bundle_workflow",
    "check_bundles",
    "check_train_settings",
    "device_overrides",
    "load_checkpoint",
    "load_weights",
    "move_aside",
    "read_metrics_csv",
    "save_atomic",
    "study_recipe",
    "write_bundles",
]
