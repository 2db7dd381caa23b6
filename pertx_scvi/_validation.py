"""Checks on user AnnData that fail early with a message naming the column, gene or value.

Nothing here modifies the AnnData it is given.
"""

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .data._rows import is_backed_sparse, iter_row_chunks, iter_stored_values, rows_per_read

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


def _where(layer: str | None) -> str:
    return f"adata.layers[{layer!r}]" if layer is not None else "adata.X"


def check_readable_rows(matrix, layer: str | None) -> None:
    """A matrix read from disk must be readable by rows: a backed CSC matrix is not (anndata
    loads all of it to read any row)."""
    if is_backed_sparse(matrix) and matrix.format != "csr":
        raise ValueError(
            f"{_where(layer)} is a backed {matrix.format.upper()} matrix: PertTX reads cells "
            "(rows), which a backed CSC matrix can only give by loading all of it; write the "
            "file with a CSR matrix (adata.X = adata.X.tocsr() before write_h5ad) or load it "
            "into memory (adata.to_memory())"
        )


def check_counts(matrix, layer: str | None, require_integer: bool, likelihood: str = "nb") -> None:
    """NaN, infinite, negative and (optionally) non-integer values are errors.

    The stored values are checked in bounded chunks (:func:`~pertx_scvi.data._rows.
    iter_stored_values`), so a matrix read from disk (backed AnnData) is never loaded whole.
    """
    where = _where(layer)
    n_bad, smallest, example = 0, np.inf, None
    for values in iter_stored_values(matrix):
        values = np.asarray(values)
        if not values.size:
            continue
        if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
            smallest = min(smallest, float(values.min()))
            continue
        finite = np.isfinite(values)
        n_bad += int(values.size - np.count_nonzero(finite))
        if n_bad:
            continue  # NaN or inf are reported first: only their count matters now
        smallest = min(smallest, float(values.min()))
        if require_integer and example is None:
            fractional = values != np.round(values)
            if fractional.any():
                example = values[fractional][0]
    if n_bad:
        raise ValueError(f"{where} contains {n_bad} NaN or infinite values; counts must be finite")
    if smallest < 0:
        raise ValueError(
            f"{where} contains negative values (min {smallest:g}); PertTX expects raw counts"
        )
    if example is not None:
        raise ValueError(
            f"{where} contains non-integer values (e.g. {example:g}) but the count likelihood "
            f"{likelihood!r} needs raw counts: pass layer= naming the raw counts, or for "
            "log-normalised data call PertTX.setup_anndata(..., is_log_normalized=True) "
            "(the model then uses likelihood='mse')"
        )


def check_log_normalized(matrix, layer: str | None, max_value: float = 30.0) -> None:
    """Values set up as log-normalised must look it: log1p of counts per 1e4 stays below 10
    (per million, below 14); larger values are counts."""
    largest = 0.0
    for values in iter_stored_values(matrix):
        if np.size(values):
            largest = max(largest, float(np.max(values)))
    if largest > max_value:
        raise ValueError(
            f"{_where(layer)} has values up to {largest:g}: that is not log-normalised data "
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


def _sample_values(matrix, n_values: int, columns: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n_values`` non-zero values of the first rows of a matrix (in memory or read
    from disk, in bounded row chunks), of its ``columns`` only when given."""
    values, n_found = [], 0
    n_rows = min(rows_per_read(matrix), max(1, 100_000 // max(int(matrix.shape[1]), 1)))
    for _, _, chunk in iter_row_chunks(matrix, n_rows):
        if columns is not None:
            chunk = chunk[:, columns]
        found = chunk.data if sp.issparse(chunk) else np.asarray(chunk).reshape(-1)
        values.append(np.asarray(found[found != 0], dtype=np.float64))
        n_found += len(values[-1])
        if n_found >= n_values:
            break
    return np.concatenate(values)[:n_values] if values else np.zeros(0)


def check_input_counts(
    matrix,
    layer: str | None,
    likelihood: str,
    n_values: int = SAMPLED_VALUES,
    columns: np.ndarray | None = None,
) -> None:
    """Inputs of a trained model: the first ``n_values`` non-zeros (of ``columns`` when given)
    are finite, non-negative and, for a count likelihood, integers (a bounded check: cheap on
    any size of data, in memory or on disk)."""
    where = _where(layer)
    values = _sample_values(matrix, n_values, columns)
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
