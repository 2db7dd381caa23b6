"""Optimiser factory: AdamW (built in), Lion (lion-pytorch) and Prodigy (prodigyopt)."""

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerName = Literal["adamw", "lion", "prodigy"]


def make_optimizer(
    name: OptimizerName, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build an optimiser by name.

    Lion usually wants a learning rate 3-10x smaller than AdamW; Prodigy estimates its own step
    size and is meant to run with ``lr=1.0``.
    """
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError as error:
            raise ImportError("optimizer='lion' needs `pip install lion-pytorch`") from error
        return Lion(params, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as error:
            raise ImportError("optimizer='prodigy' needs `pip install prodigyopt`") from error
        return Prodigy(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw', 'lion' or 'prodigy', got {name!r}")
