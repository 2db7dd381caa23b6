"""Registry and batch keys shared by the model, the data loaders and the module; the
normalisation target. Imports nothing heavy (``metrics`` and ``module`` both read it)."""

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    PERTURBATION_KEY: str = "perturbation"
    CELL_TYPE_KEY: str = "cell_type"
    BATCH_KEY: str = "batch"
    PHENOTYPE_KEY: str = "phenotype"


class _BatchKeys(NamedTuple):
    """Tensors of one collated mini-batch (a pair of a source and a target cell per row)."""

    SOURCE_X: str = "source_x"
    TARGET_X: str = "target_x"
    PERTURBATION_GENES: str = "perturbation_genes"
    TARGET_LABEL: str = "target_label"
    CELL_TYPE: str = "cell_type"
    CONTEXT: str = "context"
    PHENOTYPE: str = "phenotype"
    SOURCE_PHENOTYPE: str = "source_phenotype"


REGISTRY_KEYS = _RegistryKeys()
BATCH_KEYS = _BatchKeys()

TARGET_SUM = 1e4
"""Counts per cell after ``normalize_total``: every log-normalised value is
``log1p(counts / total * TARGET_SUM)``."""
