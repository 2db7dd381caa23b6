"""PertTX: a perturbation transformer with gene-graph priors, as an scvi-tools model."""

from . import datasets, metrics
from ._model import PertTX

__version__ = "0.1.0"

__all__ = ["PertTX", "datasets", "metrics", "__version__"]
