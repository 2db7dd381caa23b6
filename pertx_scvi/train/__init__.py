"""Training plan, optimisers, learning-rate schedules and resumable checkpoints."""

from ._checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    EpochCheckpoint,
    SafetensorsCheckpointIO,
    read_checkpoint,
    write_checkpoint,
)
from ._logging import EmbeddingUmapCallback, make_loggers, resolve_precision
from ._optimizers import make_optimizer
from ._plan import DEFAULT_LR, PertTXTrainingPlan
from ._schedules import lr_multiplier

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_LR",
    "CheckpointError",
    "EpochCheckpoint",
    "EmbeddingUmapCallback",
    "PertTXTrainingPlan",
    "SafetensorsCheckpointIO",
    "lr_multiplier",
    "make_loggers",
    "make_optimizer",
    "read_checkpoint",
    "resolve_precision",
    "write_checkpoint",
]
