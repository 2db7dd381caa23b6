"""Per-perturbation metrics of predicted versus observed expression changes.

All metrics live in log1p(normalize_total 1e4) space. For a perturbation ``p`` with mean
profile ``x_p`` (genes) and a reference control mean ``c`` the change is ``Δ_p = x_p - c``; a
prediction ``x̂_p`` gives ``Δ̂_p = x̂_p - c`` against the *same* control reference. Nothing here
imports torch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

from ._utils import (
    DEFAULT_CONTROL_TOKENS,
    DEFAULT_SEPARATOR,
    canonical_labels,
    check_labels,
    control_tokens_for,
    group_stats,
    log_normalize,
)

# --------------------------------------------------------------------------------------------
# elementary metrics on vectors
# --------------------------------------------------------------------------------------------


def pearson_rows(
    x: np.ndarray,
    y: np.ndarray,
    atol_x: np.ndarray | float = 0.0,
    atol_y: np.ndarray | float = 0.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Row-wise Pearson correlation of two equally shaped 2-D arrays.

    ``r = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² Σ (y - ȳ)²)`` over the last axis. A row that is
    constant in ``x`` or ``y`` has ``r = 0`` by definition, never NaN. A row counts as constant
    when its standard deviation is at most ``atol`` (per row or scalar) or at most ``1e-12``
    times its largest absolute value (round-off).

    Parameters
    ----------
    x, y
        Arrays of shape (rows, genes) (1-D input is treated as one row).
    atol_x, atol_y
        Spread below which a row is treated as constant (e.g. the float precision of the
        profiles a Δ was computed from, so that a no-change prediction minus its control mean
        does not correlate through round-off).
    mask
        Boolean array of the same shape: the entries of each row to use (e.g. every gene but
        the perturbed ones); ``None`` uses all.

    Returns
    -------
    numpy.ndarray
        Shape (rows,).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if mask is None:
        mask = np.ones(x.shape, dtype=bool)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), x.shape)
    n = np.maximum(mask.sum(axis=1), 1)
    xm = np.where(mask, x, 0.0)
    ym = np.where(mask, y, 0.0)
    xc = np.where(mask, x - (xm.sum(axis=1) / n)[:, None], 0.0)
    yc = np.where(mask, y - (ym.sum(axis=1) / n)[:, None], 0.0)
    sx = np.sqrt((xc * xc).sum(axis=1))
    sy = np.sqrt((yc * yc).sum(axis=1))
    root_n = np.sqrt(n)
    tol_x = np.maximum(1e-12 * np.abs(xm).max(axis=1, initial=0.0), atol_x) * root_n
    tol_y = np.maximum(1e-12 * np.abs(ym).max(axis=1, initial=0.0), atol_y) * root_n
    ok = (sx > tol_x) & (sy > tol_y) & (sx > 0) & (sy > 0)
    r = np.zeros(x.shape[0])
    r[ok] = (xc[ok] * yc[ok]).sum(axis=1) / (sx[ok] * sy[ok])
    return np.clip(r, -1.0, 1.0)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0 when either is constant (no NaN).

    ``r = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² Σ (y - ȳ)²)``.
    """
    return float(pearson_rows(np.ravel(x), np.ravel(y))[0])


def mse(pred: np.ndarray, obs: np.ndarray) -> float:
    """Mean squared error ``mean((pred - obs)²)``.

    On profiles or on Δ it is the same number, since both subtract the same control mean.
    """
    d = np.asarray(pred, dtype=np.float64) - np.asarray(obs, dtype=np.float64)
    return float(np.mean(d * d))


def mae(pred: np.ndarray, obs: np.ndarray) -> float:
    """Mean absolute error ``mean(|pred - obs|)``."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(obs, dtype=np.float64)
    return float(np.mean(np.abs(d)))


def direction_match(pred_delta: np.ndarray, obs_delta: np.ndarray) -> float:
    """Fraction of genes whose predicted and observed Δ have the same sign.

    ``mean(sign(Δ̂) == sign(Δ))`` with ``sign(0) = 0``: a zero Δ only matches a zero Δ, so the
    no-change prediction scores 0 on genes that changed.
    """
    p = np.sign(np.asarray(pred_delta, dtype=np.float64))
    o = np.sign(np.asarray(obs_delta, dtype=np.float64))
    if p.size == 0:
        return float("nan")
    return float(np.mean(p == o))


def discrimination_score(
    pred_delta: np.ndarray,
    obs_delta: np.ndarray,
    exclude: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Perturbation discrimination score of every perturbation (cell-eval's definition).

    For perturbation ``p`` (row ``p``) and genes ``S_p`` (all genes except ``exclude[p]``, the
    measured target genes of ``p``), let ``d_pq = Σ_{g ∈ S_p} |Δ̂_p,g - Δ_q,g|`` (L1 distance of
    p's prediction to q's observed Δ). Then

    ``rank_p = #{q ≠ p : d_pq < d_pp} + ½ #{q ≠ p : d_pq = d_pp}``

    ``score_p = 1 - rank_p / N``

    with ``N`` the number of perturbations ranked (rows), as in Arc's cell-eval
    (Virtual Cell Challenge). The score is 1 when p's prediction is nearest to its own
    observation; a constant or random prediction averages ``(N + 1) / (2N)`` over the
    perturbations (0.52 for 25): chance. Rank the predictions of *all* held-out
    perturbations of a run together (``pertx benchmark`` pools its folds): with few rows the
    score is coarse and every method sits near chance. With ``N < 2`` it is NaN.

    Parameters
    ----------
    pred_delta, obs_delta
        Arrays (perturbations, genes) of predicted and observed Δ, rows in the same order.
    exclude
        Per row, gene indices to leave out of that row's distances (target genes).

    Returns
    -------
    numpy.ndarray
        Shape (perturbations,).
    """
    pred = np.asarray(pred_delta, dtype=np.float64)
    obs = np.asarray(obs_delta, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim != 2:
        raise ValueError(f"need two equal 2-D arrays, got {pred.shape} and {obs.shape}")
    n, g = pred.shape
    if n < 2:
        return np.full(n, np.nan)
    scores = np.empty(n)
    for p in range(n):
        keep = np.ones(g, dtype=bool)
        if exclude is not None and len(exclude[p]):
            keep[np.asarray(exclude[p], dtype=int)] = False
        d = np.abs(obs[:, keep] - pred[p, keep]).sum(axis=1)
        own = d[p]
        others = np.delete(d, p)
        tol = 1e-10 * max(abs(own), 1e-300)
        tie = np.abs(others - own) <= tol
        rank = np.sum((others < own) & ~tie) + 0.5 * np.sum(tie)
        scores[p] = 1.0 - rank / n
    return scores


def discrimination_chance(n: int) -> float:
    """Mean :func:`discrimination_score` of a constant or random prediction among ``n``."""
    return (n + 1) / (2 * n) if n >= 2 else float("nan")


def top_genes(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest ``|score|`` (NaN last, ties by gene order)."""
    s = np.abs(np.asarray(score, dtype=np.float64))
    s = np.where(np.isnan(s), -1.0, s)
    return np.argsort(-s, kind="stable")[: int(n)]


def de_gene_overlap(pred_delta: np.ndarray, obs_de_genes: Sequence[int]) -> float:
    """Overlap of the predicted and observed DE genes.

    With ``O`` the observed DE gene set (``k = |O|``, typically the top-N by ``|t|`` among the genes
    with BH FDR < 0.05, so ``k <= N``) and ``P`` the ``k`` genes with largest ``|Δ̂|``, the
    overlap is ``|P ∩ O| / k``: 1 for a perfect ranking, about ``k / n_genes`` for a random one.
    When fewer than N genes are significant the predicted set shrinks to the same ``k``; when
    none is significant (``k = 0``) the overlap is undefined and NaN (left out of averages).
    """
    obs = np.unique(np.asarray(obs_de_genes, dtype=int))
    k = obs.size
    if k == 0:
        return float("nan")
    pred_top = top_genes(pred_delta, k)
    return float(np.intersect1d(pred_top, obs).size / k)


# --------------------------------------------------------------------------------------------
# differential expression
# --------------------------------------------------------------------------------------------


def welch_ttest(
    mean1: np.ndarray,
    var1: np.ndarray,
    n1: np.ndarray | float,
    mean0: np.ndarray,
    var0: np.ndarray,
    n0: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """Welch's two-sample t-test from summary statistics (vectorised over genes / rows).

    :func:`scipy.stats.ttest_ind_from_stats` with ``equal_var=False`` on sample variances
    ``var`` (ddof=1), plus two cases scipy leaves undefined: when both variances are 0,
    ``t = 0`` (p = 1) if the means agree and ``±inf`` (p = 0) otherwise; a NaN variance (fewer
    than 2 cells in a group) gives NaN t and p.

    Returns
    -------
    t, p
        Arrays broadcast from the inputs.
    """
    m1, v1, m0, v0 = (np.asarray(a, dtype=np.float64) for a in (mean1, var1, mean0, var0))
    n1 = np.asarray(n1, dtype=np.float64)
    n0 = np.asarray(n0, dtype=np.float64)
    m1, v1, n1, m0, v0, n0 = np.broadcast_arrays(m1, v1, n1, m0, v0, n0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t, p = stats.ttest_ind_from_stats(m1, np.sqrt(v1), n1, m0, np.sqrt(v0), n0, equal_var=False)
    diff = m1 - m0
    zero = (v1 / n1 + v0 / n0) == 0
    t = np.where(zero, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)), t)
    p = np.where(zero, np.where(diff == 0, 1.0, 0.0), p)
    bad = np.isnan(v1) | np.isnan(v0)
    return np.where(bad, np.nan, t), np.where(bad, np.nan, p)


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (FDR) along the last axis:
    :func:`scipy.stats.false_discovery_control`, with NaN p-values read as 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    p = np.where(np.isnan(p), 1.0, p)
    if p.shape[-1] == 0:
        return p.copy()
    return stats.false_discovery_control(p, axis=-1, method="bh")


# --------------------------------------------------------------------------------------------
# traps: control split and strong-effect split
# --------------------------------------------------------------------------------------------


def _rng_for(seed: int, label: str) -> np.random.Generator:
    """A generator depending only on the seed and the label (stable across runs/subsets)."""
    return np.random.default_rng([int(seed), zlib.crc32(str(label).encode())])


def split_control(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    seed: int = 0,
    fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the control cells in two random halves (trap (a): shared control noise).

    When predicted and observed Δ subtract the same control mean, the control mean's sampling
    noise appears in both and inflates the Pearson of Δ (a no-change prediction fitted on other
    control cells then correlates with every observed Δ, and train-mean gets extra credit).
    Fit models and baselines with the first half of the controls, take predicted Δ against that
    half and observed Δ against the second half::

        fit_mask, eval_mask = split_control(adata, "perturbation", "control")
        is_ctrl = (adata.obs["perturbation"] == "control").to_numpy()
        adata_train = adata[(~is_ctrl & is_train_pert) | fit_mask]
        compare(preds, adata, "perturbation", "control",
                control_mask=eval_mask, pred_control_mask=fit_mask, ...)

    (With ``adata_eval = adata[sel]``, pass ``eval_mask[sel]`` and ``fit_mask[sel]``.)

    Parameters
    ----------
    adata
        Cells with ``obs[perturbation_key]``.
    perturbation_key
        Column of ``adata.obs`` with perturbation labels.
    control_group
        Label of the control cells.
    seed
        Random seed.
    fraction
        Fraction of the control cells in the fitting half (the rest are for evaluation).

    Returns
    -------
    fit_mask, eval_mask
        Boolean arrays over ``adata.obs``; each is True only for control cells of its half,
        disjoint, together covering all control cells.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    idx = np.flatnonzero(labels == str(control_group))
    if idx.size < 2:
        raise ValueError(f"control_group {control_group!r} has {idx.size} cell(s); need >= 2")
    perm = np.random.default_rng(seed).permutation(idx)
    n_fit = int(np.clip(round(fraction * idx.size), 1, idx.size - 1))
    fit_mask = np.zeros(labels.size, dtype=bool)
    eval_mask = np.zeros(labels.size, dtype=bool)
    fit_mask[perm[:n_fit]] = True
    eval_mask[perm[n_fit:]] = True
    return fit_mask, eval_mask


def _split_half_r(
    X,
    labels: np.ndarray,
    perturbations: Sequence[str],
    control_idx: np.ndarray,
    control_label: str,
    seed: int,
    n_splits: int,
    min_cells: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split-half correlation on a normalised matrix (see :func:`split_half_correlation`)."""
    n_cells = labels.size
    masks: dict[str, np.ndarray] = {}
    groups: list[str] = []
    counts = np.array([np.sum(labels == p) for p in perturbations])
    rng_c = _rng_for(seed, f"__control__{control_label}")
    for s in range(n_splits):
        perm = rng_c.permutation(control_idx)
        h = perm.size // 2
        for half, sel in (("A", perm[:h]), ("B", perm[h:])):
            m = np.zeros(n_cells, dtype=bool)
            m[sel] = True
            masks[f"c|{s}|{half}"] = m
            groups.append(f"c|{s}|{half}")
    for p, n in zip(perturbations, counts, strict=True):
        if n < min_cells:
            continue
        idx = np.flatnonzero(labels == p)
        rng = _rng_for(seed, p)
        for s in range(n_splits):
            perm = rng.permutation(idx)
            h = perm.size // 2
            for half, sel in (("A", perm[:h]), ("B", perm[h:])):
                m = np.zeros(n_cells, dtype=bool)
                m[sel] = True
                key = f"p|{p}|{s}|{half}"
                masks[key] = m
                groups.append(key)
    mean, _, _ = group_stats(X, labels, groups, masks=masks)
    row = {g: i for i, g in enumerate(groups)}
    r = np.full(len(perturbations), np.nan)
    for j, (p, n) in enumerate(zip(perturbations, counts, strict=True)):
        if n < min_cells:
            continue
        a = np.stack([mean[row[f"p|{p}|{s}|A"]] - mean[row[f"c|{s}|A"]] for s in range(n_splits)])
        b = np.stack([mean[row[f"p|{p}|{s}|B"]] - mean[row[f"c|{s}|B"]] for s in range(n_splits)])
        r[j] = float(np.mean(pearson_rows(a, b)))
    return r, counts


def split_half_correlation(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    *,
    perturbations: Sequence[str] | None = None,
    control_mask: np.ndarray | pd.Series | None = None,
    threshold: float = 0.5,
    n_splits: int = 5,
    min_cells: int = 4,
    seed: int = 0,
    layer: str | None = None,
) -> pd.DataFrame:
    """Reproducibility of each perturbation's observed Δ (trap (b): weak effects).

    The cells of perturbation ``p`` are split at random into halves A and B, and the reference
    control cells into halves C_A and C_B. The split-half correlation is
    ``r_p = Pearson(mean(A) - mean(C_A), mean(B) - mean(C_B))`` over all genes, averaged over
    ``n_splits`` random splits. Using independent control halves keeps the shared control noise
    from making a null perturbation look reproducible (a null effect gives ``r ≈ 0``).
    ``strong_effect = r_p > threshold`` (default 0.5; uncorrected half-size correlation).
    Perturbations with fewer than ``min_cells`` cells get ``r = NaN`` and ``strong_effect=False``.

    Parameters
    ----------
    adata
        Raw counts (``X`` or ``layers[layer]``); not modified.
    perturbation_key, control_group
        Label column and control label.
    perturbations
        Labels to score (default: every non-control label with cells).
    control_mask
        Boolean mask over ``adata.obs`` of the control cells to use (default: all controls).
    threshold, n_splits, min_cells, seed, layer
        See above.

    Returns
    -------
    pandas.DataFrame
        Indexed by perturbation, columns ``n_cells``, ``split_half_r``, ``strong_effect``.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    ctrl = resolve_control_mask(adata, labels, control_group, control_mask)
    perts = resolve_perturbations(labels, control_group, perturbations, perturbation_key)
    X = log_normalize(adata, layer)
    r, n = _split_half_r(
        X, labels, perts, np.flatnonzero(ctrl), control_group, seed, n_splits, min_cells
    )
    out = pd.DataFrame({"n_cells": n.astype(int), "split_half_r": r}, index=pd.Index(perts))
    out.index.name = "perturbation"
    out["strong_effect"] = np.nan_to_num(r, nan=-np.inf) > threshold
    return out


def resolve_control_mask(
    adata: ad.AnnData, labels: np.ndarray, control_group: str, control_mask
) -> np.ndarray:
    """Boolean mask of the reference control cells; ValueError on misaligned input."""
    is_ctrl = labels == str(control_group)
    if control_mask is None:
        return is_ctrl
    if isinstance(control_mask, pd.Series):
        if not control_mask.index.equals(adata.obs_names):
            missing = adata.obs_names.difference(control_mask.index)
            if len(missing):
                raise ValueError(
                    f"control_mask (Series) lacks {len(missing)} cells of adata, "
                    f"e.g. {list(missing[:3])}"
                )
            control_mask = control_mask.reindex(adata.obs_names)
        control_mask = control_mask.to_numpy()
    m = np.asarray(control_mask)
    if m.dtype != bool or m.shape != (adata.n_obs,):
        raise ValueError(
            f"control_mask must be a boolean array with one entry per cell ({adata.n_obs}), "
            f"got dtype {m.dtype} and shape {m.shape}"
        )
    if np.any(m & ~is_ctrl):
        raise ValueError(
            f"control_mask selects {int(np.sum(m & ~is_ctrl))} cells whose label is not "
            f"control_group {control_group!r}"
        )
    if m.sum() < 2:
        raise ValueError(f"control_mask selects {int(m.sum())} control cell(s); need >= 2")
    return m


def resolve_perturbations(
    labels: np.ndarray,
    control_group: str,
    perturbations: Sequence[str] | None,
    perturbation_key: str,
) -> list[str]:
    """Default (sorted non-control labels) or checked list of perturbations to evaluate."""
    present = pd.unique(labels)
    if perturbations is None:
        return sorted(str(p) for p in present if p != str(control_group))
    perts = [str(p) for p in perturbations]
    if len(set(perts)) != len(perts):
        dup = sorted({p for p in perts if perts.count(p) > 1})
        raise ValueError(f"perturbations listed more than once: {dup}")
    absent = [p for p in perts if p not in set(present)]
    if absent:
        raise ValueError(
            f"perturbation(s) {absent} have no cells in adata.obs[{perturbation_key!r}]"
        )
    if str(control_group) in perts:
        raise ValueError(f"control_group {control_group!r} cannot be evaluated as a perturbation")
    return perts


def perturbed_mean_profile(
    adata_train: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    layer: str | None = None,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> pd.Series:
    """Mean of the perturbed training profiles (for the systematic-variation-corrected view).

    ``m = (1/|T|) Σ_{t ∈ T} x_t``: the average over the training perturbations ``T`` (non-control
    labels, combination labels merged order-independently) of their mean log1p-normalised
    profiles, each perturbation weighted equally. It is the prediction of the train-mean
    baseline, which therefore scores exactly 0 on ``pearson_delta_pert``.

    Returns
    -------
    pandas.Series
        Indexed by gene (``adata_train.var_names``).
    """
    labels = check_labels(adata_train, perturbation_key, control_group)
    tokens = control_tokens_for(control_group, control_tokens)
    canon = canonical_labels(labels, separator, tokens)
    groups = sorted({c for c in pd.unique(canon) if c})
    if not groups:
        raise ValueError(f"adata_train has no perturbed cells in obs[{perturbation_key!r}]")
    X = log_normalize(adata_train, layer)
    mean, _, _ = group_stats(X, canon, groups)
    return pd.Series(mean.mean(axis=0), index=adata_train.var_names.astype(str), name="train_mean")
