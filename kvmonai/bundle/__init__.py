"""Runtime pieces of the kvmonai MONAI bundles (handlers, checkpoints) and the bundle generator."""

from kvmonai.bundle.checkpoint import CheckpointError, load_checkpoint, load_weights, save_atomic
from kvmonai.bundle.evaluation import EvaluationReport
from kvmonai.bundle.handlers import (
    BestModelSaver,
    EpochCheckpoint,
    OptimizeForInference,
    PeriodicAndFinalValidation,
    PretrainedLoader,
    ResumeFromCheckpoint,
    RunGuard,
    RunInUseError,
    RunRecorder,
    WeightsLoader,
    lock_run_folder,
    release_run_folder,
)
from kvmonai.bundle.settings import SettingsError, check_train_settings
from kvmonai.bundle.workflow import bundle_workflow

__all__ = [
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
    "PeriodicAndFinalValidation",
    "WeightsLoader",
    "bundle_workflow",
    "check_train_settings",
    "load_checkpoint",
    "load_weights",
    "lock_run_folder",
    "release_run_folder",
    "save_atomic",
]
