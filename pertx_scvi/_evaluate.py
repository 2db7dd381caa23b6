"""Held-out evaluation of a trained PertTX against simple baselines fitted on the same cells."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from . import metrics

if TYPE_CHECKING:
    from ._model import PertTX


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's CPU thread count on exit.

    scanpy's numba kernels (used by the metrics and baselines) reset the OpenMP thread count
    to the number of cores; torch shares that pool, so training after an evaluation would
    otherwise run with more threads than asked for (many times slower on a busy machine).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predicted_profiles(
    model: PertTX,
    sources: AnnData,
    perturbations: Sequence[str],
    batch_size: int = 256,
    profile: str = "auto",
    n_samples: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean predicted log1p(normalize_total) profile per perturbation (rows) over ``sources``.

    ``profile="sampled"`` draws counts from the model's likelihood for every source cell (with
    its library size), log-normalises each drawn cell and averages: the same computation as
    the observed profiles, which are means of per-cell log-normalised counts. ``"mean"``
    averages ``predict_perturbation(...).X``, the log of the predicted *mean*; wherever counts
    are low that lies above a mean of logs (Jensen's inequality: about +1 per gene on
    Papalexi's ~200 UMIs per cell), so it is not comparable to observed profiles of count
    data. ``"auto"``: ``"sampled"`` for count likelihoods, ``"mean"`` for ``mse`` (whose
    prediction already is a mean of log-normalised values).
    """
    if profile not in ("auto", "sampled", "mean"):
        raise ValueError(f"profile must be 'auto', 'sampled' or 'mean', got {profile!r}")
    if profile == "auto":
        profile = "mean" if model.module.likelihood == "mse" else "sampled"
    prediction = model.predict_perturbation(
        sources,
        list(perturbations),
        n_samples=n_samples if profile == "sampled" else 1,
        batch_size=batch_size,
        seed=seed,
    )
    if profile == "sampled":
        values = metrics.log_normalize(AnnData(X=prediction.layers["counts"], var=prediction.var))
    else:
        values = prediction.X
    labels = prediction.obs["perturbation"].astype(str).to_numpy()
    means = [np.asarray(values[labels == p].mean(0)).ravel() for p in perturbations]
    return pd.DataFrame(
        np.vstack(means), index=list(perturbations), columns=prediction.var_names.astype(str)
    )


@keep_torch_threads()  # the metrics' numba kernels reset the thread count torch uses
def evaluate_model(
    model: PertTX,
    adata: AnnData | None = None,
    perturbations: Sequence[str] | None = None,
    baselines: Sequence[str] | dict | None = metrics.BASELINE_NAMES,
    gene_graph=None,
    gene_embedding: pd.DataFrame | None = None,
    n_top_de: int = 20,
    batch_size: int = 256,
    seed: int = 0,
    profile: str = "auto",
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
        "PertTX": predicted_profiles(
            model, adata[fit_controls], perturbations, batch_size, profile, seed=seed
        )
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
