"""Checks on user AnnData that fail early with a message naming the column, gene or value.

Nothing here modifies the AnnData it is given.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None):
    """``adata.layers[layer]`` or ``adata.X``, with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with counts")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})"
        )
    return adata.layers[layer]


def as_csr(matrix) -> sp.csr_matrix:
    """float32 CSR view/copy of a dense or sparse matrix (never modifies the input)."""
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.float32)
    return sp.csr_matrix(np.asarray(matrix, dtype=np.float32))


def check_counts(matrix, layer: str | None, require_integer: bool) -> None:
    """NaN, infinite, negative and (optionally) non-integer values are errors."""
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if hasattr(values, "compute"):  # dask arrays
        values = values.compute()
    values = np.asarray(values).ravel()
    if not np.isfinite(values).all():
        n = int((~np.isfinite(values)).sum())
        raise ValueError(f"{where} contains {n} NaN or infinite values; counts must be finite")
    if (values < 0).any():
        raise ValueError(
            f"{where} contains negative values (min {values.min():g}); PertTX expects raw counts"
        )
    if require_integer and not np.all(values == np.round(values)):
        example = values[values != np.round(values)][0]
        raise ValueError(
            f"{where} contains non-integer values (e.g. {example:g}) but the count likelihood "
            "'nb' needs raw counts: pass layer= naming the raw counts, or likelihood='mse'"
        )


def check_unique_genes(names: pd.Index, what: str = "adata.var_names") -> None:
    """Duplicated gene names are errors (tokens and predictions are keyed by name)."""
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"{what} has {len(duplicated)} duplicated gene names, e.g. {list(duplicated[:5])}; "
            "make them unique (adata.var_names_make_unique()) or pass gene_symbols="
        )


def check_obs_column(
    adata: AnnData, key: str, what: str, numeric: bool = False, allow_nan: bool = False
) -> None:
    """The column exists, has no missing values and, when ``numeric``, holds numbers."""
    if key not in adata.obs.columns:
        raise KeyError(
            f"{what} column {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})"
        )
    column = adata.obs[key]
    if numeric and not pd.api.types.is_numeric_dtype(column):
        raise ValueError(f"{what} column {key!r} must be numeric, got dtype {column.dtype}")
    n_missing = int(column.isna().sum())
    if n_missing and not allow_nan:
        raise ValueError(f"{what} column {key!r} has {n_missing} missing values (NaN)")


def check_control_group(adata: AnnData, perturbation_key: str, control_group: str) -> None:
    """The control label is present in the perturbation column."""
    values = adata.obs[perturbation_key]
    if not (values.astype(str) == str(control_group)).any():
        labels = pd.unique(values.astype(str))
        raise ValueError(
            f"control_group {control_group!r} not found in adata.obs[{perturbation_key!r}] "
            f"(labels include {list(labels[:10])})"
        )


def align_genes(adata: AnnData, registered: Sequence[str]) -> np.ndarray | None:
    """Column order that puts ``adata``'s genes in the registered order (None if identical)."""
    names = pd.Index(adata.var_names)
    registered = pd.Index(registered)
    if names.equals(registered):
        return None
    positions = names.get_indexer(registered)
    missing = registered[positions < 0]
    if len(missing):
        raise ValueError(
            f"adata lacks {len(missing)} of the {len(registered)} genes the model was set up with, "
            f"e.g. {list(missing[:5])}; subset or reorder it to the training genes"
        )
    return positions
