"""Shared helpers: label parsing, normalisation, per-group statistics, input checks.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from pertx_scvi._constants import TARGET_SUM
from pertx_scvi._labels import (  # noqa: F401  (re-exported)
    DEFAULT_CONTROL_TOKENS,
    DEFAULT_SEPARATOR,
    canonical_label,
    parse_perturbation,
)


def canonical_labels(
    labels: np.ndarray,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Iterable[str] = DEFAULT_CONTROL_TOKENS,
) -> np.ndarray:
    """:func:`canonical_label` of every cell label (parsed once per unique label)."""
    uniq, inv = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    canon = np.array([canonical_label(u, separator, control_tokens) for u in uniq], dtype=object)
    return canon[inv.ravel()]


def control_tokens_for(
    control_group: str, control_tokens: Iterable[str] = DEFAULT_CONTROL_TOKENS
) -> tuple[str, ...]:
    """The control tokens extended with the dataset's control label."""
    out = tuple(str(t) for t in control_tokens)
    return out if control_group in out else (*out, str(control_group))


def check_labels(adata: ad.AnnData, perturbation_key: str, control_group: str) -> np.ndarray:
    """Return ``adata.obs[perturbation_key]`` as a string array after checking the inputs.

    Raises
    ------
    ValueError
        If the column is missing or ``control_group`` has no cells in it.
    """
    if perturbation_key not in adata.obs.columns:
        raise ValueError(
            f"perturbation_key {perturbation_key!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)})"
        )
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if not np.any(labels == str(control_group)):
        present = pd.unique(labels)
        shown = ", ".join(map(repr, present[:10])) + (", ..." if len(present) > 10 else "")
        raise ValueError(
            f"control_group {control_group!r} has no cells in adata.obs[{perturbation_key!r}] "
            f"(values: {shown})"
        )
    return labels


def is_log_normalized(adata: ad.AnnData) -> bool:
    """Whether ``adata.X`` holds log-normalised values by scanpy's marker ``uns["log1p"]``."""
    return "log1p" in adata.uns


def log_normalize(adata: ad.AnnData, layer: str | None = None) -> sparse.csr_matrix | np.ndarray:
    """``log1p(normalize_total(counts, target_sum=1e4))`` of a copy of the counts.

    Data that are already log-normalised (``X`` of an AnnData carrying scanpy's marker
    ``adata.uns["log1p"]``, as ``sc.pp.log1p`` leaves it, e.g. GEARS and PerturBench files) are
    returned as a float32 copy, unchanged.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or in ``layers[layer]``, or log-normalised
        values in ``X`` with ``adata.uns["log1p"]``. Never modified.
    layer
        Layer holding the raw counts; ``None`` uses ``X``.

    Returns
    -------
    scipy.sparse.csr_matrix or numpy.ndarray
        Normalised matrix (sparse when the input is sparse), float32.
    """
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            raise ValueError(f"layer {layer!r} not in adata.layers ({list(adata.layers.keys())})")
        X = adata.layers[layer]
    if X is None:
        raise ValueError("adata has no expression matrix (X is None)")
    X = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.array(X, np.float32)
    if layer is None and is_log_normalized(adata):
        return X.copy()
    tmp = ad.AnnData(X=X)
    sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
    sc.pp.log1p(tmp)
    return tmp.X


def group_stats(
    X: sparse.spmatrix | np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group mean, sample variance (ddof=1) and cell count, with one matrix product.

    Parameters
    ----------
    X
        Cells x genes (normalised) matrix.
    labels
        Group label of every cell.
    groups
        Groups to compute (rows of the output, in this order).
    masks
        Optional explicit boolean cell masks for some groups (override ``labels == group``).

    Returns
    -------
    mean, var, n
        Arrays of shape (groups, genes), (groups, genes), (groups,). ``var`` is NaN for groups
        with fewer than 2 cells; ``mean`` is NaN for empty groups.
    """
    masks = masks or {}
    n_cells = X.shape[0]
    rows, cols = [], []
    for i, g in enumerate(groups):
        m = masks[g] if g in masks else labels == g
        idx = np.flatnonzero(m)
        rows.append(np.full(idx.size, i))
        cols.append(idx)
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    ind = sparse.csr_matrix((np.ones(r.size), (r, c)), shape=(len(groups), n_cells))
    n = np.asarray(ind.sum(axis=1)).ravel()
    if sparse.issparse(X):
        s1 = np.asarray((ind @ X).todense(), dtype=np.float64)
        s2 = np.asarray((ind @ X.multiply(X)).todense(), dtype=np.float64)
    else:
        Xd = np.asarray(X, dtype=np.float64)
        s1 = np.asarray(ind @ Xd)
        s2 = np.asarray(ind @ (Xd * Xd))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n[:, None]
        var = (s2 - n[:, None] * mean**2) / (n[:, None] - 1)
    var = np.where(n[:, None] > 1, np.maximum(var, 0.0), np.nan)
    return mean, var, n


def as_gene_vector(values, genes: pd.Index, name: str) -> np.ndarray:
    """A per-gene vector in ``genes`` order from a Series (matched by gene name) or an array
    (by position); a ValueError naming ``name`` when genes are missing or the length differs."""
    if isinstance(values, pd.Series):
        values = values.set_axis(values.index.astype(str))
        missing = genes.difference(values.index)
        if len(missing):
            raise ValueError(
                f"{name} lacks {len(missing)} gene(s) of the data, e.g. {list(missing[:5])}"
            )
        return values.reindex(genes).to_numpy(dtype=np.float64)
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size != len(genes):
        raise ValueError(f"{name} has {arr.size} values but the data has {len(genes)} genes")
    return arr


def align_prediction(pred: pd.DataFrame, genes: pd.Index, method: str) -> pd.DataFrame:
    """Reorder a prediction's columns to ``genes``; ValueError naming mismatched genes."""
    if not isinstance(pred, pd.DataFrame):
        raise ValueError(f"prediction of {method!r} must be a pandas DataFrame, got {type(pred)}")
    cols = pd.Index(pred.columns.astype(str))
    missing = genes.difference(cols)
    extra = cols.difference(genes)
    if len(missing) or len(extra):
        msg = f"genes of prediction {method!r} do not match adata_eval.var_names:"
        if len(missing):
            msg += f" {len(missing)} missing (e.g. {list(missing[:5])})"
        if len(extra):
            msg += f" {len(extra)} not in the data (e.g. {list(extra[:5])})"
        raise ValueError(msg)
    if cols.has_duplicates:
        raise ValueError(f"prediction {method!r} has duplicated gene columns")
    out = pred.copy()
    out.columns = cols
    return out.loc[:, genes]
