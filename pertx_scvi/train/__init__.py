"""Training plan, optimisers and learning-rate schedules."""

from ._plan import PertTXTrainingPlan
from ._schedules import lr_multiplier

__all__ = ["PertTXTrainingPlan", "lr_multiplier"]
