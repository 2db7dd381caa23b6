"""Checks on user AnnData that fail early with a message naming the column, gene or value.

Nothing here modifies the AnnData it is given.
"""

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

SAMPLED_VALUES = 10_000
COUNT_LIKELIHOODS = ("nb", "zinb")


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


def check_counts(matrix, layer: str | None, require_integer: bool, likelihood: str = "nb") -> None:
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
            f"{likelihood!r} needs raw counts: pass layer= naming the raw counts, or for "
            "log-normalised data call PertTX.setup_anndata(..., is_log_normalized=True) "
            "(the model then uses likelihood='mse')"
        )


def check_log_normalized(matrix, layer: str | None, max_value: float = 30.0) -> None:
    """Values set up as log-normalised must look it: log1p of counts per 1e4 stays below 10
    (per million, below 14); larger values are counts."""
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    largest = float(np.max(values)) if np.size(values) else 0.0
    if largest > max_value:
        raise ValueError(
            f"{where} has values up to {largest:g}: that is not log-normalised data "
            "(log1p(normalize_total) stays below ~14); for raw counts leave "
            "is_log_normalized=False"
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


def registered_categories(obs: pd.DataFrame, key: str, mapping: Sequence) -> pd.Categorical:
    """``obs[key]`` as a categorical over the ``mapping`` registered at setup (values matched
    as text); a clear error when the column is missing or holds categories unseen at setup."""
    if key not in obs.columns:
        raise KeyError(f"column {key!r} (used at setup) not found in adata.obs")
    categories = pd.Index(np.asarray(mapping))
    codes = pd.Index(categories.astype(str)).get_indexer(obs[key].astype(str))
    if (codes < 0).any():
        unknown = pd.unique(obs[key].astype(str)[codes < 0])
        raise ValueError(f"adata.obs[{key!r}] has labels unseen at setup: {list(unknown[:10])}")
    return pd.Categorical.from_codes(codes, categories=categories)


def check_control_group(adata: AnnData, perturbation_key: str, control_group: str) -> None:
    """The control label is present in the perturbation column."""
    values = adata.obs[perturbation_key]
    if not (values.astype(str) == str(control_group)).any():
        labels = pd.unique(values.astype(str))
        raise ValueError(
            f"control_group {control_group!r} not found in adata.obs[{perturbation_key!r}] "
            f"(labels include {list(labels[:10])})"
        )


def _sample_values(matrix, n_values: int) -> np.ndarray:
    """Up to ``n_values`` non-zero values of a matrix (its first stored values / first rows)."""
    if sp.issparse(matrix):
        if not hasattr(matrix, "data") or not isinstance(matrix.data, np.ndarray):
            matrix = sp.csr_matrix(matrix)
        return np.asarray(matrix.data[:n_values], dtype=np.float64)
    if hasattr(matrix, "compute"):  # dask arrays: the first rows only
        matrix = matrix[: n_values // max(matrix.shape[1], 1) + 1].compute()
    values, n_found = [], 0
    step = max(1, 100_000 // max(matrix.shape[1], 1))
    for start in range(0, matrix.shape[0], step):
        block = np.asarray(matrix[start : start + step], dtype=np.float64).ravel()
        values.append(block[block != 0])
        n_found += len(values[-1])
        if n_found >= n_values:
            break
    return np.concatenate(values)[:n_values] if values else np.zeros(0)


def check_input_counts(
    matrix, layer: str | None, likelihood: str, n_values: int = SAMPLED_VALUES
) -> None:
    """Inputs of a trained model: the first ``n_values`` non-zeros are finite, non-negative and,
    for a count likelihood, integers (a bounded check: cheap on any size of data)."""
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    values = _sample_values(matrix, n_values)
    if not np.isfinite(values).all():
        raise ValueError(
            f"{where} holds NaN or infinite values; PertTX predicts from the raw counts of {where}"
        )
    if (values < 0).any():
        raise ValueError(
            f"{where} holds negative values (e.g. {values[values < 0][0]:.4g}); PertTX was set "
            f"up on raw counts in {where}: pass the counts there, not scaled or centred values"
        )
    fractional = values != np.round(values)
    if likelihood in COUNT_LIKELIHOODS and fractional.any():
        hint = " (e.g. adata.X = adata.layers['counts'])" if layer is None else ""
        raise ValueError(
            f"{where} holds non-integer values (e.g. {values[fractional][0]:.4g}); PertTX was "
            f"set up on raw counts in {where} (likelihood {likelihood!r}): put the raw counts "
            f"there, not log-normalised values{hint}"
        )


def align_genes(adata: AnnData, registered: Sequence[str]) -> np.ndarray | None:
    """Column order that puts ``adata``'s genes in the registered order (None if identical).

    Genes are matched by ``adata.var_names``; genes the model does not know are dropped (logged),
    missing ones are an error naming some of them.
    """
    names = pd.Index(adata.var_names)
    registered = pd.Index(registered)
    if names.equals(registered):
        return None
    if names.has_duplicates:
        check_unique_genes(names)
    positions = names.get_indexer(registered)
    missing = registered[positions < 0]
    if len(missing):
        raise ValueError(
            f"adata lacks {len(missing)} of the {len(registered)} genes the model was set up with, "
            f"e.g. {list(missing[:5])} (genes are matched by adata.var_names); subset or reorder "
            "it to the training genes"
        )
    n_extra = len(names) - len(registered)
    if n_extra:
        extra = names[~names.isin(registered)]
        logger.info(
            "adata has %d genes the model was not trained on (e.g. %s): they are ignored",
            n_extra,
            list(extra[:5]),
        )
    return positions
