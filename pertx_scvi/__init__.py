"""PertTX: a perturbation transformer with gene-graph priors, as an scvi-tools model.

Submodules and :class:`PertTX` load on first use, so ``import pertx_scvi.metrics`` (numpy,
scipy, pandas, scanpy) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = ("benchmark", "datasets", "graphs", "metrics", "pl")
_ATTRIBUTES = {
    "PertTX": "._model",
    "GeneGraph": ".graphs",
    "TrainingInterrupted": "._training",
    "ModelFileError": "._model_files",
}

__all__ = [
    "GeneGraph",
    "ModelFileError",
    "PertTX",
    "TrainingInterrupted",
    "benchmark",
    "datasets",
    "graphs",
    "metrics",
    "pl",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import benchmark, datasets, graphs, metrics, pl
    from ._model import PertTX
    from ._model_files import ModelFileError
    from ._training import TrainingInterrupted
    from .graphs import GeneGraph


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
    elif name in _ATTRIBUTES:
        module = getattr(importlib.import_module(_ATTRIBUTES[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__() -> list[str]:
    return sorted(__all__)
