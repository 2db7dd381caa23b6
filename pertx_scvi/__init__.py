"""PertTX: a perturbation transformer with gene-graph priors, as an scvi-tools model."""

from . import datasets, graphs, metrics, pl
from ._model import PertTX
from .graphs import GeneGraph

__version__ = "0.1.0"

__all__ = ["GeneGraph", "PertTX", "datasets", "graphs", "metrics", "pl", "__version__"]
