"""Training curves from a trained model's ``history``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._utils import PathLike, finish, grid

_SUFFIXES = (("_train", "train"), ("_validation", "validation"))


def _loss_groups(history: Mapping[str, pd.DataFrame | pd.Series]) -> dict[str, dict[str, str]]:
    """Group history keys by loss term: ``{"loss": {"train": "train_loss", ...}, ...}``."""
    groups: dict[str, dict[str, str]] = {}
    for key in history:
        name = str(key)
        if name in ("train_loss", "validation_loss"):
            groups.setdefault("total loss", {})[name.split("_")[0]] = name
            continue
        for suffix, split in _SUFFIXES:
            if name.endswith(suffix):
                groups.setdefault(name[: -len(suffix)], {})[split] = name
                break
    total = groups.pop("total loss", None)
    return ({"total loss": total} if total else {}) | groups


def loss_curves(
    history: Mapping[str, pd.DataFrame | pd.Series],
    save: PathLike | None = None,
    *,
    ncols: int | None = 3,
    log_scale: bool = False,
    show: bool = False,
) -> Figure:
    """Training (and validation) loss per epoch, one panel per loss term.

    Parameters
    ----------
    history
        ``model.history``: a mapping from logged names (``train_loss``, ``validation_loss``,
        ``next_cell_train``, ``mlm_validation``...) to one-column DataFrames (or Series) indexed
        by epoch. The total loss comes first, then each ``<term>_train`` / ``<term>_validation``
        pair; other entries (e.g. learning rate) are ignored.
    save
        Path of the image to write.
    ncols
        Panels per row.
    log_scale
        Logarithmic y axis.
    show
        Call :func:`matplotlib.pyplot.show`.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per loss term.
    """
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history is empty: train the model first (model.history)")
    groups = _loss_groups(history)
    if not groups:
        raise ValueError(f"history has no loss entries (keys: {list(history)[:10]})")
    fig, axes = grid(len(groups), ncols, (3.4, 2.6))
    styles = {"train": {"color": "tab:blue"}, "validation": {"color": "tab:orange", "ls": "--"}}
    for ax, (term, keys) in zip(axes, groups.items(), strict=True):
        for split in ("train", "validation"):
            if split not in keys:
                continue
            values = history[keys[split]]
            series = values.iloc[:, 0] if isinstance(values, pd.DataFrame) else values
            series = pd.to_numeric(series, errors="coerce").dropna()
            epochs = np.asarray(series.index, dtype=np.float64)
            ax.plot(epochs, series.to_numpy(), marker="o", ms=2.5, label=split, **styles[split])
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return finish(fig, show, save)
