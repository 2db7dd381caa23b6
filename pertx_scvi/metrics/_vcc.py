"""Virtual Cell Challenge 2026 style score: a method's gain over the strongest trivial
predictor, as a share of what repeating the experiment gains.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._summary import lower_is_better, per_metric_wide

__all__ = ["vcc_scores"]


def _best(means: pd.Series, metric: str) -> str:
    return str(means.idxmin() if lower_is_better(metric) else means.idxmax())


def vcc_scores(
    df: pd.DataFrame,
    method: str = "PertTX",
    replicate: str = "split_half",
    baselines: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """``s = (method - best baseline) / (replicate - best baseline)`` per metric, with an interval.

    ``s`` is 0 for a method no better than the strongest trivial predictor and 1 for one as
    good as the experiment's own replicate (half of a perturbation's cells predicting the other
    half, :class:`~pertx_scvi.metrics.SplitHalfCeiling`). Every method must have been scored
    against the same cells (the other half), as :func:`~pertx_scvi.benchmark.benchmark` does
    with ``replicate=True``.

    Means are taken over the perturbations (and folds) where ``method``, ``replicate`` and
    every baseline have a value. The best baseline is the one with the best mean in the
    metric's direction (:func:`~pertx_scvi.metrics.lower_is_better`). The interval is a
    percentile bootstrap over perturbations in which the best baseline is chosen again in each
    resample, so the selection of the bar is part of the uncertainty; ``verdict`` is
    ``"ahead"`` when the interval of ``s`` is above 0, ``"behind"`` when below, ``"tie"``
    otherwise. ``s`` is NaN where the replicate is not better than the best baseline (no room
    to measure a gain).

    Parameters
    ----------
    df
        Tidy table (``method``, ``perturbation``, ``metric``, ``value``; ``fold`` when folds
        are concatenated).
    method, replicate
        The scored method and the replicate predictor in ``df``.
    baselines
        The trivial predictors (default: every other method in ``df`` except names that start
        with ``method``, such as ``PertTX_shuffled_graph``).
    metrics
        Metrics to score (default: all in ``df``).
    n_boot, seed, ci
        Bootstrap resamples, seed and coverage.

    Returns
    -------
    pandas.DataFrame
        One row per metric: ``n``, ``best_baseline``, ``method_mean``, ``baseline_mean``,
        ``replicate_mean``, ``s``, ``ci_low``, ``ci_high``, ``verdict``.
    """
    need = {"method", "perturbation", "metric", "value"}
    missing = need.difference(df.columns)
    if missing:
        raise ValueError(f"df lacks column(s) {sorted(missing)}; pass the output of compare()")
    present = list(pd.unique(df["method"]))
    for name in (method, replicate):
        if name not in present:
            raise ValueError(f"method {name!r} is not in df (methods: {present})")
    if baselines is None:
        baselines = [m for m in present if m != replicate and not str(m).startswith(method)]
    baselines = [b for b in baselines if b in present]
    if not baselines:
        raise ValueError(f"no baseline in df to compare with (methods: {present})")
    lo_q, hi_q = (1 - ci) / 2, (1 + ci) / 2
    rows = []
    for metric, table in per_metric_wide(df, metrics):
        part = table[[method, replicate, *baselines]].dropna()
        row: dict = {"metric": metric, "n": len(part)}
        if part.empty:
            rows.append(row)
            continue
        means = part.mean()
        best = _best(means[baselines], metric)
        gap = means[replicate] - means[best]
        row |= {
            "best_baseline": best,
            "method_mean": float(means[method]),
            "baseline_mean": float(means[best]),
            "replicate_mean": float(means[replicate]),
        }
        room = gap < 0 if lower_is_better(metric) else gap > 0
        row["s"] = float((means[method] - means[best]) / gap) if room else np.nan
        low = high = np.nan
        if room and len(part) >= 3 and n_boot > 0:
            values = part.to_numpy(dtype=np.float64)
            idx = np.random.default_rng(seed).integers(0, len(part), size=(n_boot, len(part)))
            resampled = values[idx].mean(axis=1)  # (n_boot, methods)
            base = resampled[:, 2:]
            bar = base.min(axis=1) if lower_is_better(metric) else base.max(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (resampled[:, 0] - bar) / (resampled[:, 1] - bar)
            low, high = np.nanquantile(s, [lo_q, hi_q])
        row["ci_low"], row["ci_high"] = float(low), float(high)
        if np.isnan(low):
            row["verdict"] = "too few" if room else "no room"
        else:
            row["verdict"] = "ahead" if low > 0 else "behind" if high < 0 else "tie"
        rows.append(row)
    columns = ["metric", "n", "best_baseline", "method_mean", "baseline_mean", "replicate_mean"]
    return pd.DataFrame(rows, columns=[*columns, "s", "ci_low", "ci_high", "verdict"])
