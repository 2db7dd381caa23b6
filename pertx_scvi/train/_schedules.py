"""Learning-rate schedules as multipliers of the base rate, per optimisation step."""

import math
from collections.abc import Callable
from typing import Literal

Schedule = Literal["cosine", "step", "constant"]


def lr_multiplier(
    schedule: Schedule,
    total_steps: int,
    warmup_steps: int,
    min_factor: float = 0.05,
    step_every: int | None = None,
    step_gamma: float = 0.5,
) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then ``cosine`` decay to ``min_factor``, ``step``
    decay by ``step_gamma`` every ``step_every`` steps, or ``constant``."""
    if schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")
    decay_steps = max(total_steps - warmup_steps, 1)
    step_every = step_every or max(decay_steps // 3, 1)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = step - warmup_steps
        if schedule == "cosine":
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress / decay_steps, 1.0)))
            return min_factor + (1 - min_factor) * cosine
        if schedule == "step":
            return step_gamma ** (progress // step_every)
        return 1.0

    return multiplier
