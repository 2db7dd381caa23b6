"""Ranking of a virtual screen (:meth:`pertx_scvi.PertTX.virtual_screen`)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._utils import PathLike, finish


def virtual_screen(
    ranking: pd.DataFrame,
    top: int = 20,
    save: PathLike | None = None,
    *,
    highlight: Sequence[str] | str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    show: bool = False,
) -> Axes:
    """Horizontal bars of the best-ranked candidates of a virtual screen, with intervals.

    Parameters
    ----------
    ranking
        Output of :meth:`pertx_scvi.PertTX.virtual_screen`: columns ``perturbation``,
        ``score`` and optionally ``score_low`` / ``score_high`` (drawn as error bars) and
        ``trained`` (candidates never perturbed in training are hatched).
    top
        Number of candidates shown (the first rows by ``score``).
    save
        Path of the image to write.
    highlight
        Candidates drawn in a distinct colour (e.g. the known driver).
    ax
        Axes to draw into; default a new figure sized to ``top``.
    title
        Axes title; default names the score (``ranking.attrs["score"]``).
    show
        Call :func:`matplotlib.pyplot.show`.

    Returns
    -------
    matplotlib.axes.Axes
        The bar chart, best candidate on top.
    """
    missing = {"perturbation", "score"}.difference(ranking.columns)
    if missing:
        raise ValueError(
            f"ranking lacks column(s) {sorted(missing)}; pass the output of "
            "model.virtual_screen(...)"
        )
    if len(ranking) == 0:
        raise ValueError("ranking has no rows to plot")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    rows = ranking.sort_values("score", ascending=False, kind="stable").head(int(top))
    names = rows["perturbation"].astype(str).to_numpy()
    score = rows["score"].to_numpy(dtype=np.float64)
    wanted = {highlight} if isinstance(highlight, str) else set(highlight or [])
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, max(1.8, 0.28 * len(rows) + 0.9)))
    positions = np.arange(len(rows))[::-1]  # best on top
    colours = ["tab:orange" if n in wanted else "tab:blue" for n in names]
    bars = ax.barh(positions, score, color=colours, edgecolor="0.2", lw=0.5)
    if "trained" in rows.columns:
        for bar, trained in zip(bars, rows["trained"].to_numpy(dtype=bool), strict=True):
            if not trained:
                bar.set_hatch("///")
    if {"score_low", "score_high"} <= set(rows.columns):
        low = rows["score_low"].to_numpy(dtype=np.float64)
        high = rows["score_high"].to_numpy(dtype=np.float64)
        err = np.vstack([np.clip(score - low, 0, None), np.clip(high - score, 0, None)])
        ax.errorbar(score, positions, xerr=np.nan_to_num(err), fmt="none", c="k", lw=0.8)
    ax.axvline(0, color="0.3", lw=0.6)
    ax.set_yticks(positions, names, fontsize=8)
    score_name = ranking.attrs.get("score", "score")
    ax.set_xlabel(f"{score_name} score (higher is better)", fontsize=9)
    ax.set_title(title or f"virtual screen: top {len(rows)} of {len(ranking)}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.figure.tight_layout()
    finish(ax.figure, show, save)
    return ax
