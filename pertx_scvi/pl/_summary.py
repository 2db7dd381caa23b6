"""Bar charts of summarised metrics (mean and bootstrap interval per method)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import lower_is_better
from ._utils import PathLike, finish, grid


def metric_bars(
    summary_df: pd.DataFrame,
    save: PathLike | None = None,
    *,
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    highlight: str | None = "PertTX",
    title: str | None = None,
    ncols: int | None = 4,
    show: bool = False,
) -> Figure:
    """One bar chart per metric: the mean of each method with its interval as an error bar.

    Parameters
    ----------
    summary_df
        Output of :func:`pertx_scvi.metrics.summarize`: columns ``method``, ``metric``,
        ``mean``, ``ci_low``, ``ci_high`` (and ``n``), one row per method and metric. Rows with
        another grouping column (e.g. ``strong_effect``) must be filtered first.
    save
        Path of the image to write.
    metrics
        Metrics to plot, in this order (default: all, in order of appearance).
    methods
        Methods to plot, in this order (default: all, in order of appearance).
    highlight
        Method drawn in a distinct colour (default ``"PertTX"``; ignored when absent).
    title
        Figure title.
    ncols
        Panels per row.
    show
        Call :func:`matplotlib.pyplot.show`.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per metric. Error metrics (``mse``, ``mae``) are marked "lower is better".
    """
    need = {"method", "metric", "mean", "ci_low", "ci_high"}
    missing = need.difference(summary_df.columns)
    if missing:
        raise ValueError(
            f"summary_df lacks column(s) {sorted(missing)}; pass metrics.summarize(...) output"
        )
    df = summary_df
    metrics = list(pd.unique(df["metric"])) if metrics is None else [str(m) for m in metrics]
    methods = list(pd.unique(df["method"])) if methods is None else [str(m) for m in methods]
    if not metrics or not methods:
        raise ValueError("summary_df has no rows to plot")
    duplicated = df.duplicated(["method", "metric"])
    if duplicated.any():
        raise ValueError(
            "summary_df has several rows per (method, metric); filter it first (e.g. on "
            "strong_effect)"
        )
    palette = _palette(methods, highlight)
    fig, axes = grid(len(metrics), ncols, (max(2.6, 0.45 * len(methods) + 1.2), 2.9))
    positions = np.arange(len(methods))
    for ax, metric in zip(axes, metrics, strict=True):
        rows = df[df["metric"] == metric].set_index("method").reindex(methods)
        mean = rows["mean"].to_numpy(dtype=np.float64)
        low = rows["ci_low"].to_numpy(dtype=np.float64)
        high = rows["ci_high"].to_numpy(dtype=np.float64)
        err = np.vstack([np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)])
        err = np.nan_to_num(err, nan=0.0)
        ax.bar(positions, np.nan_to_num(mean, nan=0.0), color=palette, edgecolor="0.2", lw=0.5)
        ax.errorbar(positions, np.nan_to_num(mean, nan=0.0), yerr=err, fmt="none", c="k", lw=1)
        for i in np.flatnonzero(np.isnan(mean)):
            ax.text(positions[i], 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.axhline(0, color="0.3", lw=0.6)
        suffix = " (lower is better)" if lower_is_better(metric) else ""
        ax.set_title(f"{metric}{suffix}", fontsize=9)
        ax.set_xticks(positions, methods, rotation=45, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return finish(fig, show, save)


def _palette(methods: Sequence[str], highlight: str | None) -> list:
    """Grey-blue bars for baselines, orange for the highlighted method."""
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10"]
    colours = []
    other = 0
    for method in methods:
        if highlight is not None and method == highlight:
            colours.append("tab:orange")
        else:
            colours.append(cmap([0, 2, 4, 7, 9, 5, 6, 8][other % 8]))
            other += 1
    return colours
