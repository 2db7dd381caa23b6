"""Training plan, optimisers and learning-rate schedules."""

from ._logging import EmbeddingUmapCallback, make_loggers, resolve_precision
from ._optimizers import make_optimizer
from ._plan import DEFAULT_LR, PertTXTrainingPlan
from ._schedules import lr_multiplier

__all__ = [
    "DEFAULT_LR",
    "EmbeddingUmapCallback",
    "PertTXTrainingPlan",
    "lr_multiplier",
    "make_loggers",
    "make_optimizer",
    "resolve_precision",
]
