"""Predicted versus observed perturbation effects: scatter per perturbation, DE-gene heatmap."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ._utils import PathLike, deltas, finish, grid


def effect_scatter(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    control_mean: pd.Series | np.ndarray,
    perturbations: Sequence[str] | None = None,
    save: PathLike | None = None,
    *,
    observed_control_mean: pd.Series | np.ndarray | None = None,
    n_top_de: int = 20,
    ncols: int | None = None,
    max_panels: int = 30,
    show: bool = False,
) -> Figure:
    """Predicted versus observed Δ, one panel per perturbation.

    Δ is a mean profile minus the control mean, in the space the profiles are in (for PertTX
    log1p(normalize_total 1e4)). Each panel shows every gene, the top ``n_top_de`` genes by
    ``|observed Δ|`` highlighted, the diagonal, and the Pearson correlation of the Δ over all
    genes (``r``) and over the highlighted genes (``r_top``).

    Parameters
    ----------
    predicted
        Predicted mean profiles, perturbations (rows) x genes (columns).
    observed
        Observed mean profiles, perturbations x genes (the genes that are plotted).
    control_mean
        Control mean profile (Series indexed by gene, or an array in ``observed`` column order),
        subtracted from ``predicted`` and, unless ``observed_control_mean`` is given, from
        ``observed``.
    perturbations
        Perturbations to plot, in this order; default every row present in both tables.
    save
        Path of the image to write (format from the suffix, e.g. ``.png``).
    observed_control_mean
        Control mean for the observed Δ when it differs from the predictions' reference
        (split-control evaluation: the methods see one half of the controls, the observed Δ is
        taken against the other).
    n_top_de
        Number of genes highlighted per panel.
    ncols
        Panels per row (default: a near-square grid).
    max_panels
        Plot at most this many perturbations (the first ones).
    show
        Call :func:`matplotlib.pyplot.show`.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per plotted perturbation.

    Examples
    --------
    >>> import pertx_scvi.pl as pl
    >>> fig = pl.effect_scatter(pred_df, obs_df, control_mean, save="scatter.png")
    """
    d_pred, d_obs = deltas(predicted, observed, control_mean, observed_control_mean, perturbations)
    labels = list(d_obs.index)[: int(max_panels)]
    fig, axes = grid(len(labels), ncols, (2.8, 2.8))
    for ax, label in zip(axes, labels, strict=True):
        x = d_obs.loc[label].to_numpy(dtype=np.float64)
        y = d_pred.loc[label].to_numpy(dtype=np.float64)
        top = np.argsort(-np.abs(x), kind="stable")[: int(n_top_de)]
        is_top = np.zeros(x.size, dtype=bool)
        is_top[top] = True
        ax.scatter(x[~is_top], y[~is_top], s=5, c="0.6", alpha=0.6, linewidths=0)
        ax.scatter(x[is_top], y[is_top], s=10, c="tab:red", linewidths=0, label="top DE")
        finite = np.concatenate([x, y])
        finite = finite[np.isfinite(finite)]
        lim = float(np.abs(finite).max()) * 1.05 if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="0.3", lw=0.8, ls="--")
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(
            f"{label}\nr={_pearson(x, y):.2f}  r_top={_pearson(x[top], y[top]):.2f}",
            fontsize=9,
        )
        ax.tick_params(labelsize=7)
    for ax in axes:
        if ax.get_subplotspec().is_last_row() or ax is axes[-1]:
            ax.set_xlabel("observed Δ", fontsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("predicted Δ", fontsize=8)
    fig.tight_layout()
    return finish(fig, show, save)


def de_heatmap(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    control_mean: pd.Series | np.ndarray,
    perturbations: Sequence[str] | None = None,
    save: PathLike | None = None,
    *,
    observed_control_mean: pd.Series | np.ndarray | None = None,
    n_genes: int = 10,
    max_perturbations: int = 30,
    ncols: int = 1,
    cmap: str = "RdBu_r",
    show: bool = False,
) -> Figure:
    """Heatmap of observed and predicted Δ on each perturbation's top DE genes.

    One panel per perturbation: two rows (observed Δ, predicted Δ) over that perturbation's
    ``n_genes`` genes with the largest ``|observed Δ|``, on one colour scale symmetric around
    zero shared by all panels (a colour bar is the last axes).

    Parameters
    ----------
    predicted, observed, control_mean, perturbations, save, observed_control_mean
        As in :func:`effect_scatter`.
    n_genes
        Top DE genes per perturbation.
    max_perturbations
        Plot at most this many perturbations (the first ones).
    ncols
        Panels per row.
    cmap
        Diverging colour map.
    show
        Call :func:`matplotlib.pyplot.show`.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per plotted perturbation plus the colour bar.
    """
    d_pred, d_obs = deltas(predicted, observed, control_mean, observed_control_mean, perturbations)
    labels = list(d_obs.index)[: int(max_perturbations)]
    n_genes = max(1, min(int(n_genes), d_obs.shape[1]))
    blocks = []
    for label in labels:
        x = d_obs.loc[label].to_numpy(dtype=np.float64)
        top = np.argsort(-np.abs(x), kind="stable")[:n_genes]
        values = np.vstack([x[top], d_pred.loc[label].to_numpy(dtype=np.float64)[top]])
        blocks.append((label, d_obs.columns[top], values))
    vmax = max(float(np.nanmax(np.abs(v))) for _, _, v in blocks) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    ncols = max(1, min(int(ncols), len(labels)))
    nrows = int(np.ceil(len(labels) / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(4.0, 0.42 * n_genes + 1.6) * ncols, 1.05 * nrows + 0.6),
        squeeze=False,
    )
    flat = list(axes.ravel())
    image = None
    for ax, (label, genes, values) in zip(flat, blocks, strict=False):
        image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_yticks([0, 1], ["observed", "predicted"], fontsize=7)
        ax.set_xticks(np.arange(len(genes)), list(genes), rotation=90, fontsize=6)
        ax.set_title(label, fontsize=8, loc="left")
    for ax in flat[len(blocks) :]:
        fig.delaxes(ax)
    fig.tight_layout()
    fig.colorbar(image, ax=flat[: len(blocks)], label="Δ expression", shrink=0.8, pad=0.02)
    return finish(fig, show, save)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, 0 when either side is constant."""
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])
