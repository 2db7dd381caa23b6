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


def metric_names(
    n_top_de: int = 20, with_train_mean: bool = True, nontarget: bool = True
) -> list[str]:
    """Names of the metrics :func:`compare` reports (in its order).

    With ``nontarget`` each metric but ``discrimination`` (which always leaves the target genes
    out) also comes as ``<metric>_nontarget``, computed without the perturbed genes.
    """
    n = int(n_top_de)
    base = [
        "pearson_delta",
        f"pearson_delta_top{n}",
        "mse",
        f"mse_top{n}",
        "mae",
        f"mae_top{n}",
        f"direction_match_top{n}",
        f"de_overlap_top{n}",
    ]
    if with_train_mean:
        base += ["pearson_delta_pert", f"pearson_delta_pert_top{n}"]
    names = [*base, "discrimination"]
    if nontarget:
        names += [f"{m}_nontarget" for m in base]
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
    return_deltas: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
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
      over genes without p's measured target genes; ``1 - rank / N_pert``).
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
    * ``<metric>_nontarget``: each metric above computed without p's own measured target
      genes (left out of the all-gene metrics and of the choice of ``D_p``): a knockout that
      lowers its own gene is easy to predict and can carry a metric on its own.

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
        Ranking of DE genes: ``"welch"`` (``|t|``) or ``"abs_delta"`` (``|Δ|``). Significance for
        ``de_overlap`` always uses the Welch p-values.
    fdr
        BH FDR threshold for the observed DE genes of ``de_overlap``.
    strong_effect_threshold, n_splits, seed
        Strong-effect flag (see above).
    separator, control_tokens
        Label parsing (``control_group`` is always a control token).

    return_deltas
        Also return the Δ tables (perturbations x genes): ``"observed"`` and one per method,
        e.g. to rank the perturbations of several folds together
        (:func:`pertx_scvi.metrics.pooled_discrimination`).

    Returns
    -------
    pandas.DataFrame
        Tidy: one row per (method, perturbation, metric) with columns ``method``,
        ``perturbation``, ``metric``, ``value``, ``strong_effect``, ``split_half_r``,
        ``n_cells``. With ``return_deltas``: ``(table, deltas)``.
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
    exclude = target_gene_positions(perts, genes, separator, tokens)
    not_target = np.ones(obs.shape, dtype=bool)
    for i, positions in enumerate(exclude):
        not_target[i, positions] = False
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
    # Every metric twice: over all genes, and without each perturbation's own target genes
    # (a knockout lowering its own gene is easy to predict and can dominate a metric).
    gene_sets = {"": np.ones(obs.shape, dtype=bool), "_nontarget": not_target}
    observed = {
        suffix: _ObservedView(obs, obs_delta, rank_score, q < fdr, keep, n_top)
        for suffix, keep in gene_sets.items()
    }

    # ---- per method -------------------------------------------------------------------------
    frames = []
    deltas = {"observed": pd.DataFrame(obs_delta, index=pd.Index(perts), columns=genes)}
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
        deltas[str(method)] = pd.DataFrame(dhat, index=pd.Index(perts), columns=genes)
        tol_hat = _resolution(xhat, c_pred)
        values: dict[str, np.ndarray] = {}
        for suffix, view in observed.items():
            part = view.score(xhat, dhat, tol_hat, tol_obs, sfx)
            if m_train is not None:
                part.update(view.score_pert(xhat, m_train, sfx))
            values.update({f"{name}{suffix}": v for name, v in part.items()})
        values["discrimination"] = discrimination_score(dhat, obs_delta, exclude)
        for metric in metric_names(sfx, m_train is not None):
            frames.append(
                pd.DataFrame(
                    {
                        "method": str(method),
                        "perturbation": perts,
                        "metric": metric,
                        "value": np.asarray(values[metric], dtype=np.float64),
                        "strong_effect": strong,
                        "split_half_r": split_r,
                        "n_cells": obs_n.astype(int),
                    }
                )
            )
    result = pd.concat(frames, ignore_index=True)
    return (result, deltas) if return_deltas else result


def target_gene_positions(
    perturbations: Sequence[str],
    genes: pd.Index,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> list[np.ndarray]:
    """Positions in ``genes`` of each perturbation's measured target genes."""
    genes = pd.Index(genes)
    out = []
    for label in perturbations:
        members = [g for g in parse_perturbation(label, separator, control_tokens) if g in genes]
        out.append(genes.get_indexer(members).astype(int))
    return out


class _ObservedView:
    """Observed profiles restricted to a gene set per perturbation (all, or non-target)."""

    def __init__(self, obs, obs_delta, rank_score, significant, keep, n_top):
        self.keep = keep
        ranked = np.where(keep, rank_score, -np.inf)
        self.top = np.argsort(-ranked, axis=1, kind="stable")[:, :n_top]
        sig = significant & keep
        sig_order = np.argsort(-np.where(sig, ranked, -np.inf), axis=1, kind="stable")
        self.sig_top = [sig_order[i, : min(n_top, int(sig[i].sum()))] for i in range(len(obs))]
        self.obs = obs
        self.obs_delta = obs_delta
        self.obs_top = np.take_along_axis(obs, self.top, axis=1)
        self.obs_delta_top = np.take_along_axis(obs_delta, self.top, axis=1)

    def _masked_mean(self, values: np.ndarray) -> np.ndarray:
        return np.where(self.keep, values, 0.0).sum(axis=1) / np.maximum(self.keep.sum(1), 1)

    def score(self, xhat, dhat, tol_hat, tol_obs, n) -> dict[str, np.ndarray]:
        dhat_top = np.take_along_axis(dhat, self.top, axis=1)
        err = xhat - self.obs
        err_top = np.take_along_axis(xhat, self.top, axis=1) - self.obs_top
        ranked_dhat = np.where(self.keep, dhat, np.nan)  # excluded genes rank last
        return {
            "pearson_delta": pearson_rows(dhat, self.obs_delta, tol_hat, tol_obs, self.keep),
            f"pearson_delta_top{n}": pearson_rows(dhat_top, self.obs_delta_top, tol_hat, tol_obs),
            "mse": self._masked_mean(err**2),
            f"mse_top{n}": np.mean(err_top**2, axis=1),
            "mae": self._masked_mean(np.abs(err)),
            f"mae_top{n}": np.mean(np.abs(err_top), axis=1),
            f"direction_match_top{n}": np.mean(
                np.sign(dhat_top) == np.sign(self.obs_delta_top), axis=1
            ),
            f"de_overlap_top{n}": np.array(
                [de_gene_overlap(ranked_dhat[i], self.sig_top[i]) for i in range(len(self.obs))]
            ),
        }

    def score_pert(self, xhat, m_train, n) -> dict[str, np.ndarray]:
        """Pearson of the profiles minus the mean perturbed training profile."""
        ph = xhat - m_train[None, :]
        po = self.obs - m_train[None, :]
        tol_ph, tol_po = _resolution(xhat, m_train), _resolution(self.obs, m_train)
        return {
            "pearson_delta_pert": pearson_rows(ph, po, tol_ph, tol_po, self.keep),
            f"pearson_delta_pert_top{n}": pearson_rows(
                np.take_along_axis(ph, self.top, axis=1),
                np.take_along_axis(po, self.top, axis=1),
                tol_ph,
                tol_po,
            ),
        }


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


LOWER_IS_BETTER = ("mse", "mae")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (errors: ``mse*``, ``mae*``)."""
    return str(metric).startswith(LOWER_IS_BETTER)


def per_metric_wide(df: pd.DataFrame, metrics: Sequence[str] | None = None):
    """``(metric, table)`` pairs: per metric of ``metrics`` (default: all in ``df``) found in
    the tidy ``df``, its values as perturbations (and folds, with a ``fold`` column) x methods."""
    keys = ["fold", "perturbation"] if "fold" in df.columns else ["perturbation"]
    wide = df.pivot_table(index=["metric", *keys], columns="method", values="value", dropna=False)
    for metric in metrics or list(pd.unique(df["metric"])):
        if metric in wide.index.get_level_values(0):
            yield metric, wide.loc[metric]


def paired_differences(
    df: pd.DataFrame,
    reference: str = "PertTX",
    n_boot: int = 1000,
    seed: int = 0,
    *,
    ci: float = 0.95,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``reference`` minus every other method, paired over perturbations, with an interval.

    For each metric and method ``m``, take the perturbations (and folds, when ``df`` has a
    ``fold`` column) where both ``reference`` and ``m`` have a value, the differences
    ``d_i = reference_i - m_i``, their mean and a percentile bootstrap interval of the mean
    (``n_boot`` resamples of the perturbations, the same resamples for every comparison).
    ``verdict`` reads the interval in the metric's direction (:func:`lower_is_better`):
    ``"ahead"`` when it excludes 0 on the side of ``reference`` being better, ``"behind"``
    when it excludes 0 on the other side, ``"tie"`` otherwise; with fewer than 3 paired
    perturbations there is no interval and the verdict is ``"too few"``.

    Parameters
    ----------
    df
        Tidy table of :func:`compare` (several folds may be concatenated, with ``fold``).
    reference
        The method compared with all others.
    n_boot, seed, ci
        Bootstrap resamples, seed and coverage.
    metrics
        Metrics to compare (default: all in ``df``).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``metric``, ``n``, ``reference_mean``, ``method_mean``,
        ``difference``, ``ci_low``, ``ci_high``, ``verdict``.
    """
    need = {"method", "perturbation", "metric", "value"}
    missing = need.difference(df.columns)
    if missing:
        raise ValueError(f"df lacks column(s) {sorted(missing)}; pass the output of compare()")
    if reference not in set(df["method"]):
        raise ValueError(
            f"method {reference!r} is not in df (methods: {list(pd.unique(df.method))})"
        )
    lo_q, hi_q = (1 - ci) / 2, (1 + ci) / 2
    rows = []
    for metric, part in per_metric_wide(df, metrics):
        for method in [m for m in pd.unique(df["method"]) if m != reference]:
            pair = part[[reference, method]].dropna()
            d = (pair[reference] - pair[method]).to_numpy(dtype=np.float64)
            row = {"method": method, "metric": metric, "n": d.size}
            row["reference_mean"] = float(pair[reference].mean()) if d.size else np.nan
            row["method_mean"] = float(pair[method].mean()) if d.size else np.nan
            row["difference"] = float(d.mean()) if d.size else np.nan
            if d.size >= 3 and n_boot > 0:
                idx = np.random.default_rng(seed).integers(0, d.size, size=(int(n_boot), d.size))
                low, high = np.quantile(d[idx].mean(axis=1), [lo_q, hi_q])
            else:
                low = high = np.nan
            row["ci_low"], row["ci_high"] = float(low), float(high)
            better_low, better_high = (-high, -low) if lower_is_better(metric) else (low, high)
            if np.isnan(low):
                row["verdict"] = "too few"
            else:
                row["verdict"] = (
                    "ahead" if better_low > 0 else "behind" if better_high < 0 else "tie"
                )
            rows.append(row)
    columns = ["method", "metric", "n", "reference_mean", "method_mean", "difference"]
    return pd.DataFrame(rows, columns=[*columns, "ci_low", "ci_high", "verdict"])
