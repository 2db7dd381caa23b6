"""Compare predictions of several methods on the same held-out perturbations.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from ._metrics import (
    _split_half_r,
    benjamini_hochberg,
    de_gene_overlap,
    discrimination_score,
    pearson_rows,
    resolve_control_mask,
    resolve_perturbations,
    welch_ttest,
)
from ._utils import (
    DEFAULT_CONTROL_TOKENS,
    DEFAULT_SEPARATOR,
    align_prediction,
    as_gene_vector,
    canonical_label,
    check_labels,
    control_tokens_for,
    group_stats,
    log_normalize,
    parse_perturbation,
)

__all__ = ["compare", "summarize", "metric_names"]


def metric_names(n_top_de: int = 20, with_train_mean: bool = True) -> list[str]:
    """Names of the metrics :func:`compare` reports (in its order)."""
    n = int(n_top_de)
    names = [
        "pearson_delta",
        f"pearson_delta_top{n}",
        "mse",
        f"mse_top{n}",
        "mae",
        f"mae_top{n}",
        f"direction_match_top{n}",
        "discrimination",
        f"de_overlap_top{n}",
    ]
    if with_train_mean:
        names += ["pearson_delta_pert", f"pearson_delta_pert_top{n}"]
    return names


def _rows_for(
    pred: pd.DataFrame,
    perturbations: Sequence[str],
    method: str,
    separator: str,
    tokens: Sequence[str],
) -> np.ndarray:
    """Prediction rows in ``perturbations`` order; exact label first, then order-free match."""
    index = pd.Index(pred.index.astype(str))
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()
        raise ValueError(f"prediction {method!r} has duplicated rows, e.g. {list(dup[:5])}")
    canon = pd.Index([canonical_label(lb, separator, tokens) for lb in index])
    canon_pos = {}
    for i, c in enumerate(canon):
        canon_pos.setdefault(c, []).append(i)
    pos, missing = [], []
    for p in perturbations:
        i = index.get_indexer([p])[0]
        if i < 0:
            cands = canon_pos.get(canonical_label(p, separator, tokens), [])
            i = cands[0] if len(cands) == 1 else -1
        if i < 0:
            missing.append(p)
        pos.append(i)
    if missing:
        raise ValueError(
            f"prediction {method!r} has no row for perturbation(s) {missing[:10]}"
            + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        )
    values = pred.to_numpy(dtype=np.float64)[np.asarray(pos)]
    if not np.all(np.isfinite(values)):
        bad = [perturbations[j] for j in np.flatnonzero(~np.isfinite(values).all(axis=1))]
        raise ValueError(f"prediction {method!r} has NaN/inf values for {bad[:10]}")
    return values


def compare(
    predictions: Mapping[str, Any],
    adata_eval: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    *,
    control_mask: np.ndarray | pd.Series | None = None,
    pred_control_mask: np.ndarray | pd.Series | None = None,
    train_mean: pd.Series | np.ndarray | None = None,
    n_top_de: int = 20,
    layer: str | None = None,
    perturbations: Sequence[str] | None = None,
    de_method: Literal["welch", "abs_delta"] = "welch",
    fdr: float = 0.05,
    strong_effect_threshold: float = 0.5,
    n_splits: int = 5,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> pd.DataFrame:
    """Score every method on the same held-out perturbations, with every metric.

    Observed profiles come from ``adata_eval`` (raw counts, normalised on a copy to
    log1p(normalize_total 1e4)). For perturbation ``p``: ``x_p`` = mean profile of its cells,
    ``c`` = mean of the reference control cells (``control_mask``), ``Δ_p = x_p - c``; a
    method's predicted profile ``x̂_p`` gives ``Δ̂_p = x̂_p - c'`` with ``c'`` the mean of the
    control cells the methods were fitted on (``pred_control_mask``; by default ``c' = c``).
    DE genes of ``p``: Welch t-test of p's cells against the reference control cells
    (:func:`welch_ttest`), BH FDR over genes.

    Metrics (``N = n_top_de``; ``D_p`` = top-N genes by ``|t|``, or by ``|Δ_p|`` with
    ``de_method="abs_delta"`` or when p has a single cell; ties and undefined t in gene order):

    * ``pearson_delta``: Pearson(Δ̂_p, Δ_p) over all genes (0 when either is constant).
    * ``pearson_delta_topN``: the same on ``D_p``.
    * ``mse`` / ``mse_topN``: ``mean((x̂_p - x_p)²)`` on all genes / on ``D_p``.
    * ``mae`` / ``mae_topN``: ``mean(|x̂_p - x_p|)`` on all genes / on ``D_p``.
    * ``direction_match_topN``: ``mean(sign Δ̂_p == sign Δ_p)`` on ``D_p`` (:func:`direction_match`).
    * ``discrimination``: :func:`discrimination_score` among the evaluated perturbations (L1
      over genes without p's measured target genes; ``1 - rank / (N_pert - 1)``).
    * ``de_overlap_topN``: :func:`de_gene_overlap` with the observed DE set = top-N (by the
      ranking above) among genes with BH FDR < ``fdr``; with ``k < N`` significant genes the
      sets have size ``k``; NaN when no gene is significant. The prediction is ranked by
      ``|Δ̂|`` over all genes and the observation by ``|t|`` (or ``|Δ|``) among significant
      genes, so even the exact observed mean can score below 1 (a noisy, non-significant gene
      can have a large ``|Δ|``).
    * ``pearson_delta_pert`` / ``pearson_delta_pert_topN`` (only with ``train_mean``): Pearson
      of ``x̂_p - m`` vs ``x_p - m`` with ``m`` the mean perturbed training profile
      (:func:`perturbed_mean_profile`): the systematic-variation-corrected view, on all genes /
      on ``D_p``. The train-mean baseline scores 0 here by construction.

    Two traps, each an option:

    * **shared control noise** (``control_mask`` and ``pred_control_mask``; default ``None``:
      both = all control cells of ``adata_eval``). When Δ̂ and Δ subtract the same control mean,
      its sampling noise is common to both and inflates ``pearson_delta`` (a no-change
      prediction fitted on other control cells then correlates with every observed Δ). Use
      :func:`split_control`: fit the methods with the first half, and pass
      ``control_mask=eval_mask, pred_control_mask=fit_mask`` (both halves must be cells of
      ``adata_eval``), so that Δ̂ is taken against the controls the methods saw and Δ against
      independent ones. ``ControlMean`` then has ``Δ̂ = 0`` and Pearson 0 exactly.
    * **weak effects** (``strong_effect_threshold``, default 0.5): every row carries
      ``strong_effect`` = split-half correlation of p's observed Δ
      (:func:`split_half_correlation`, with ``n_splits`` random splits and independent control
      halves) above the threshold, so that :func:`summarize` can report reproducible
      perturbations separately.

    Parameters
    ----------
    predictions
        Method name -> DataFrame (rows = perturbation labels, columns = ``adata_eval`` genes, any
        order) of predicted mean log1p-normalised profiles, or a fitted baseline (anything with
        ``predict(labels)``). Rows are matched by exact label, else order-free (``"B+A"`` for
        ``"A+B"``, ``"A+ctrl"`` for ``"A"``); extra rows are ignored.
    adata_eval
        Cells with raw counts (``X`` or ``layers[layer]``) of the held-out perturbations and the
        reference controls. Not modified.
    perturbation_key, control_group
        Label column and control label.
    control_mask
        Boolean mask over ``adata_eval.obs`` (array or Series indexed by obs names) of the
        reference control cells for the observed Δ, the DE tests and the split-half
        correlation; must select only cells labelled ``control_group``. Default: all of them.
    pred_control_mask
        Same kind of mask: the control cells whose mean is subtracted from the predictions
        (those the methods were fitted on). Default: ``control_mask``.
    train_mean
        Mean perturbed training profile (Series indexed by gene or array in
        ``adata_eval.var_names`` order); enables the ``pearson_delta_pert*`` metrics.
    n_top_de
        ``N``, the number of top DE genes.
    layer
        Layer of ``adata_eval`` with raw counts (``None``: ``X``).
    perturbations
        Labels to evaluate (default: every non-control label with cells in ``adata_eval``).
    de_method
        Ranking of DE genes: ``"welch"`` (|t|) or ``"abs_delta"`` (|Δ|). Significance for
        ``de_overlap`` always uses the Welch p-values.
    fdr
        BH FDR threshold for the observed DE genes of ``de_overlap``.
    strong_effect_threshold, n_splits, seed
        Strong-effect flag (see above).
    separator, control_tokens
        Label parsing (``control_group`` is always a control token).

    Returns
    -------
    pandas.DataFrame
        Tidy: one row per (method, perturbation, metric) with columns ``method``,
        ``perturbation``, ``metric``, ``value``, ``strong_effect``, ``split_half_r``,
        ``n_cells``.
    """
    if not predictions:
        raise ValueError("predictions is empty")
    if de_method not in ("welch", "abs_delta"):
        raise ValueError(f"de_method must be 'welch' or 'abs_delta', got {de_method!r}")
    n_top = sfx = int(n_top_de)
    if n_top < 1:
        raise ValueError(f"n_top_de must be >= 1, got {sfx}")
    labels = check_labels(adata_eval, perturbation_key, control_group)
    ctrl = resolve_control_mask(adata_eval, labels, control_group, control_mask)
    pred_ctrl = (
        ctrl
        if pred_control_mask is None
        else resolve_control_mask(adata_eval, labels, control_group, pred_control_mask)
    )
    perts = resolve_perturbations(labels, control_group, perturbations, perturbation_key)
    if not perts:
        raise ValueError(f"adata_eval has no perturbed cells in obs[{perturbation_key!r}]")
    genes = pd.Index(adata_eval.var_names.astype(str))
    if genes.has_duplicates:
        raise ValueError("adata_eval.var_names has duplicated genes")
    n_genes = len(genes)
    n_top = min(n_top, n_genes)
    tokens = control_tokens_for(control_group, control_tokens)
    m_train = None if train_mean is None else as_gene_vector(train_mean, genes, "train_mean")

    # ---- observed statistics ---------------------------------------------------------------
    X = log_normalize(adata_eval, layer)
    mean, var, n = group_stats(
        X,
        labels,
        ["__ctrl__", "__pred_ctrl__", *perts],
        masks={"__ctrl__": ctrl, "__pred_ctrl__": pred_ctrl},
    )
    c_mean, c_var, c_n = mean[0], var[0], n[0]  # reference controls (observed Δ, tests)
    c_pred = mean[1]  # controls the methods were fitted on (predicted Δ)
    obs, obs_var, obs_n = mean[2:], var[2:], n[2:]
    obs_delta = obs - c_mean[None, :]
    t, p = welch_ttest(obs, obs_var, obs_n[:, None], c_mean[None, :], c_var[None, :], c_n)
    q = benjamini_hochberg(p)
    rank_score = np.abs(t) if de_method == "welch" else np.abs(obs_delta)
    few = obs_n < 2  # no variance estimate: the t-test is undefined, rank by |Δ| instead
    rank_score[few] = np.abs(obs_delta[few])
    rank_score = np.where(np.isnan(rank_score), -1.0, rank_score)  # undefined t ranks last
    top = np.argsort(-rank_score, axis=1, kind="stable")[:, :n_top]  # (P, N)
    sig = q < fdr
    sig_order = np.argsort(-np.where(sig, rank_score, -np.inf), axis=1, kind="stable")
    sig_top = [sig_order[i, : min(n_top, int(sig[i].sum()))] for i in range(len(perts))]
    exclude = [
        genes.get_indexer([g for g in parse_perturbation(pp, separator, tokens) if g in genes])
        for pp in perts
    ]
    split_r, _ = _split_half_r(
        X,
        labels,
        perts,
        np.flatnonzero(ctrl),
        control_group,
        seed,
        n_splits,
        min_cells=4,
    )
    strong = np.nan_to_num(split_r, nan=-np.inf) > strong_effect_threshold
    tol_obs = _resolution(obs, c_mean)
    obs_top = np.take_along_axis(obs, top, axis=1)
    obs_delta_top = np.take_along_axis(obs_delta, top, axis=1)

    # ---- per method -------------------------------------------------------------------------
    frames = []
    for method, pred in predictions.items():
        if not isinstance(pred, pd.DataFrame):
            if not hasattr(pred, "predict"):
                raise ValueError(
                    f"prediction {method!r} must be a DataFrame or have a predict() method"
                )
            pred = pred.predict(perts)
        pred = align_prediction(pred, genes, str(method))
        xhat = _rows_for(pred, perts, str(method), separator, tokens)
        dhat = xhat - c_pred[None, :]
        tol_hat = _resolution(xhat, c_pred)
        dhat_top = np.take_along_axis(dhat, top, axis=1)
        xhat_top = np.take_along_axis(xhat, top, axis=1)
        err = xhat - obs
        err_top = xhat_top - obs_top
        values: dict[str, np.ndarray] = {
            "pearson_delta": pearson_rows(dhat, obs_delta, tol_hat, tol_obs),
            f"pearson_delta_top{sfx}": pearson_rows(dhat_top, obs_delta_top, tol_hat, tol_obs),
            "mse": np.mean(err**2, axis=1),
            f"mse_top{sfx}": np.mean(err_top**2, axis=1),
            "mae": np.mean(np.abs(err), axis=1),
            f"mae_top{sfx}": np.mean(np.abs(err_top), axis=1),
            f"direction_match_top{sfx}": np.mean(
                np.sign(dhat_top) == np.sign(obs_delta_top), axis=1
            ),
            "discrimination": discrimination_score(dhat, obs_delta, exclude),
            f"de_overlap_top{sfx}": np.array(
                [de_gene_overlap(dhat[i], sig_top[i]) for i in range(len(perts))]
            ),
        }
        if m_train is not None:
            ph = xhat - m_train[None, :]
            po = obs - m_train[None, :]
            tol_ph, tol_po = _resolution(xhat, m_train), _resolution(obs, m_train)
            values["pearson_delta_pert"] = pearson_rows(ph, po, tol_ph, tol_po)
            values[f"pearson_delta_pert_top{sfx}"] = pearson_rows(
                np.take_along_axis(ph, top, axis=1),
                np.take_along_axis(po, top, axis=1),
                tol_ph,
                tol_po,
            )
        for metric, v in values.items():
            frames.append(
                pd.DataFrame(
                    {
                        "method": str(method),
                        "perturbation": perts,
                        "metric": metric,
                        "value": np.asarray(v, dtype=np.float64),
                        "strong_effect": strong,
                        "split_half_r": split_r,
                        "n_cells": obs_n.astype(int),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _resolution(profiles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row spread below which ``profiles - reference`` is round-off (float32 resolution).

    Predictions often arrive as float32; a Δ whose spread is below ``1e-6`` times the size of
    the profiles it came from is treated as constant (Pearson 0), e.g. the train-mean
    prediction minus the train-mean profile.
    """
    scale = np.maximum(np.abs(profiles).max(axis=1), np.abs(reference).max())
    return 1e-6 * scale


def summarize(
    df: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    by_strong_effect: bool = False,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Mean of each metric per method over perturbations, with a bootstrap interval.

    For each (method, metric[, strong_effect]) group with non-NaN values ``v_1..v_n`` (one per
    perturbation; NaN values, e.g. ``de_overlap`` without significant genes, are left out), the
    interval is the percentile bootstrap: ``n_boot`` resamples of the ``n`` perturbations with
    replacement, the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of their means. Every group starts
    from the same seed, so methods evaluated on the same perturbations are resampled identically
    (paired).

    Parameters
    ----------
    df
        Output of :func:`compare`.
    n_boot
        Bootstrap resamples (0: no interval, NaN bounds).
    seed
        Random seed.
    by_strong_effect
        Also group by the ``strong_effect`` column.
    ci
        Coverage of the interval.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``metric``, [``strong_effect``,] ``n``, ``mean``, ``ci_low``,
        ``ci_high``; methods and metrics in their order of appearance in ``df``.
    """
    need = {"method", "perturbation", "metric", "value"}
    if by_strong_effect:
        need.add("strong_effect")
    missing = need.difference(df.columns)
    if missing:
        raise ValueError(f"df lacks column(s) {sorted(missing)}; pass the output of compare()")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    keys = ["method", "metric"] + (["strong_effect"] if by_strong_effect else [])
    lo_q, hi_q = (1 - ci) / 2, (1 + ci) / 2
    rows = []
    for key, g in df.groupby(keys, sort=False):
        v = g.sort_values("perturbation")["value"].to_numpy(dtype=np.float64)
        v = v[~np.isnan(v)]
        n = v.size
        row = dict(zip(keys, key, strict=True))
        row["n"] = n
        row["mean"] = float(v.mean()) if n else np.nan
        if n and n_boot > 0:
            rng = np.random.default_rng(seed)
            idx = rng.integers(0, n, size=(int(n_boot), n))
            boots = v[idx].mean(axis=1)
            row["ci_low"], row["ci_high"] = (float(x) for x in np.quantile(boots, [lo_q, hi_q]))
        else:
            row["ci_low"] = row["ci_high"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "ci_low", "ci_high"])
