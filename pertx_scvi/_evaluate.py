"""Held-out evaluation of a trained PertTX against simple baselines fitted on the same cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from . import metrics

if TYPE_CHECKING:
    from ._model import PertTX

DEFAULT_BASELINES = ("control_mean", "train_mean", "additive", "linear", "graph_neighbour")


def predicted_profiles(
    model: PertTX, sources: AnnData, perturbations: Sequence[str], batch_size: int = 256
) -> pd.DataFrame:
    """Mean predicted log1p(normalize_total) profile per perturbation (rows) over ``sources``."""
    prediction = model.predict_perturbation(sources, perturbations, batch_size=batch_size)
    labels = prediction.obs["perturbation"].to_numpy()
    means = [np.asarray(prediction.X[labels == p].mean(0)).ravel() for p in perturbations]
    return pd.DataFrame(np.vstack(means), index=list(perturbations), columns=prediction.var_names)


def evaluate_model(
    model: PertTX,
    adata: AnnData | None = None,
    perturbations: Sequence[str] | None = None,
    baselines: Sequence[str] | dict | None = DEFAULT_BASELINES,
    gene_graph=None,
    gene_embedding: pd.DataFrame | None = None,
    n_top_de: int = 20,
    batch_size: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """See :meth:`pertx_scvi.PertTX.evaluate`."""
    model._check_if_trained(warn=False)
    adata = model.adata if adata is None else adata
    setup = model._setup_args
    key, control = setup["perturbation_key"], str(setup["control_group"])
    perturbations = list(perturbations or model.holdout_perturbations_)
    if not perturbations:
        raise ValueError(
            "no perturbations to evaluate: pass perturbations= or train with holdout_perturbations="
        )
    labels = adata.obs[key].astype(str).to_numpy()
    absent = [p for p in perturbations if not (labels == p).any()]
    if absent:
        raise ValueError(
            f"perturbations {absent} have no cells in adata.obs[{key!r}] to compare to"
        )

    # Methods see the training cells; the observed effects use the held-out perturbations and
    # the control cells training did not use (split-control), or all controls otherwise.
    is_control = labels == control
    train_cells = np.zeros(adata.n_obs, dtype=bool)
    if adata is model.adata:
        train_cells[np.concatenate([model.train_indices, model.validation_indices])] = True
    else:
        train_cells = ~np.isin(labels, perturbations)
    fit_controls = is_control & train_cells
    reference_controls = is_control & ~train_cells
    if not reference_controls.any():
        reference_controls = fit_controls

    adata_train = adata[train_cells]
    predictions: dict[str, object] = {
        "PertTX": predicted_profiles(model, adata[fit_controls], perturbations, batch_size)
    }
    if baselines:
        if isinstance(baselines, dict):
            predictions.update(baselines)
        else:
            edges = None if gene_graph is None else gene_graph.edges
            names = [b for b in baselines if b != "graph_neighbour" or edges is not None]
            predictions.update(
                metrics.fit_baselines(
                    adata_train,
                    key,
                    control,
                    names=names,
                    edges=edges,
                    gene_embedding=gene_embedding,
                    layer=setup["layer"],
                    separator=setup["label_separator"],
                )
            )
    evaluated = np.isin(labels, perturbations) | fit_controls | reference_controls
    adata_eval = adata[evaluated]
    result = metrics.compare(
        predictions,
        adata_eval,
        key,
        control,
        control_mask=reference_controls[evaluated],
        pred_control_mask=fit_controls[evaluated],
        train_mean=metrics.perturbed_mean_profile(
            adata_train, key, control, layer=setup["layer"], separator=setup["label_separator"]
        ),
        n_top_de=n_top_de,
        layer=setup["layer"],
        perturbations=perturbations,
        seed=seed,
        separator=setup["label_separator"],
    )
    return result
