"""Runtime pieces of the kvmonai MONAI bundles (handlers, evaluation, settings checks, opening a bundle as a workflow
or a network) and the bundle generator. Checkpoint files (:mod:`kvmonai.networks.checkpoint`) are re-exported."""

from kvmonai.bundle.evaluation import EvaluationReport
from kvmonai.bundle.generate import check_bundles, write_bundles
from kvmonai.bundle.handlers import (
    RUN_OUTPUTS,
    BestModelSaver,
    EpochCheckpoint,
    OptimizeForInference,
    PretrainedLoader,
    ResumeFromCheckpoint,
    RunGuard,
    RunInUseError,
    RunRecorder,
    ValidationHandler,
    WeightsLoader,
    lock_run_folder,
    move_aside,
    read_metrics_csv,
    release_run_folder,
)
from kvmonai.bundle.settings import SettingsError, check_train_settings
from kvmonai.bundle.workflow import bundle_network, bundle_workflow
from kvmonai.networks import CheckpointError, load_checkpoint, load_weights, save_atomic

__all__ = [
    "RUN_OUTPUTS",
    "BestModelSaver",
    "CheckpointError",
    "EpochCheckpoint",
    "EvaluationReport",
    "OptimizeForInference",
    "PretrainedLoader",
    "ResumeFromCheckpoint",
    "RunGuard",
    "RunInUseError",
    "RunRecorder",
    "SettingsError",
    "ValidationHandler",
    "WeightsLoader",
    "bundle_network",
    "bundle_workflow",
    "check_bundles",
    "check_train_settings",
    "load_checkpoint",
    "load_weights",
    "lock_run_folder",
    "move_aside",
    "read_metrics_csv",
    "release_run_folder",
    "save_atomic",
    "write_bundles",
]
