"""Shared helpers of the plotting functions (figure layout, saving, showing)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..metrics._utils import as_gene_vector

PathLike = str | os.PathLike


def grid(n_panels: int, ncols: int | None, panel_size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes on a grid (unused cells removed), axes in reading order."""
    n_panels = max(int(n_panels), 1)
    ncols = min(ncols or math.ceil(math.sqrt(n_panels)), n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
        squeeze=False,
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        fig.delaxes(ax)
    return fig, flat[:n_panels]


def finish(fig: Figure, show: bool, save: PathLike | None, dpi: int = 150) -> Figure:
    """Save ``fig`` to ``save`` (parent folders created) and/or show it; return it."""
    if save is not None:
        path = os.fspath(save)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def as_frame(profiles: pd.DataFrame | pd.Series, what: str) -> pd.DataFrame:
    """Perturbations x genes table; a Series (one profile) becomes a one-row table."""
    if isinstance(profiles, pd.Series):
        return profiles.to_frame().T
    if not isinstance(profiles, pd.DataFrame):
        raise TypeError(
            f"{what} must be a DataFrame (perturbations x genes), not {type(profiles).__name__}"
        )
    return profiles


def deltas(
    predicted: pd.DataFrame | pd.Series,
    observed: pd.DataFrame | pd.Series,
    control_mean,
    observed_control_mean=None,
    perturbations: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicted and observed Δ (perturbations x shared genes) against the control mean(s)."""
    predicted = as_frame(predicted, "predicted")
    observed = as_frame(observed, "observed")
    predicted.index = predicted.index.astype(str)
    observed.index = observed.index.astype(str)
    genes = pd.Index(observed.columns.astype(str))
    missing_genes = genes.difference(predicted.columns.astype(str))
    if len(missing_genes):
        raise ValueError(
            f"predicted lacks {len(missing_genes)} observed gene(s), e.g. {list(missing_genes[:5])}"
        )
    if perturbations is None:
        perturbations = [p for p in observed.index if p in predicted.index]
    perturbations = [str(p) for p in perturbations]
    if not perturbations:
        raise ValueError("no perturbation is in both predicted and observed")
    for name, frame in (("predicted", predicted), ("observed", observed)):
        absent = [p for p in perturbations if p not in frame.index]
        if absent:
            raise ValueError(f"{name} has no row for {absent[:10]}")
    pred = predicted.loc[perturbations]
    pred.columns = pred.columns.astype(str)
    obs = observed.loc[perturbations]
    obs.columns = genes
    pred = pred[genes]
    c_pred = as_gene_vector(control_mean, genes, "control_mean")
    c_obs = (
        c_pred
        if observed_control_mean is None
        else as_gene_vector(observed_control_mean, genes, "observed_control_mean")
    )
    return pred - c_pred[None, :], obs - c_obs[None, :]
