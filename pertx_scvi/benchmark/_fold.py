"""One benchmark fold: train PertTX without the held-out labels, score it and the baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import metrics
from .._threads import keep_torch_threads
from ._sources import _Data
from ._splits import assign_subgroups


def _can_predict(model, label: str) -> bool:
    try:
        model.get_perturbation_embedding([label])
    except (ValueError, KeyError, IndexError):
        return False
    return True


def _epoch_callback(update):
    """A Lightning callback calling ``update(epoch)`` after every training epoch."""
    from lightning.pytorch.callbacks import Callback

    class _Progress(Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # noqa: D102
            update(trainer.current_epoch + 1)

    return _Progress()


def _mean_profiles(adata: AnnData, mask_by_name: dict[str, np.ndarray], layer: str | None):
    """log1p(normalize_total) mean profile of each named cell mask (rows)."""
    rows = {}
    for name, mask in mask_by_name.items():
        if not mask.any():
            continue
        X = metrics.log_normalize(adata[mask], layer)
        rows[name] = np.asarray(X.mean(axis=0)).ravel()
    return pd.DataFrame.from_dict(rows, orient="index", columns=adata.var_names.astype(str))


@keep_torch_threads()  # the metrics' numba kernels reset the thread count torch uses
def _run_fold(
    fold: int,
    held: list[str],
    data: _Data,
    settings: dict[str, Any],
    graph,
    gene_embedding: pd.DataFrame | None,
    controls: tuple[np.ndarray, np.ndarray],
    update_epoch,
    id_table: Path | None = None,
    model_graph: Any = None,
    baseline_edges: dict[str, pd.DataFrame] | None = None,
    cell_eval: bool = False,
    replicate: bool = False,
) -> tuple[
    pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any], dict | None, Any
]:
    """Train and evaluate one fold: (metrics, profiles, deltas, history, info, cell_eval,
    replicate).

    ``controls`` are the fitting and reference control masks of
    :func:`pertx_scvi.metrics.control_masks`: PertTX trains on the fitting controls only and
    predicts from them; the observed effects use the reference ones. ``graph`` (one GeneGraph)
    serves the graph-neighbour baselines; ``model_graph`` (a GeneGraph or a list, one view
    each; default ``graph``) is passed to PertTX as ``gene_graph=``; ``baseline_edges`` (name ->
    edge table) replaces ``graph`` for the graph-neighbour baselines, one of each per table. ``deltas`` holds the
    predicted Δ of every method and the observed Δ (rows ``"<method>|<label>"``), from which
    the benchmark ranks all folds' perturbations together. With ``cell_eval``, PertTX's
    predicted cells and the train-mean prediction are also scored by cell-eval
    (:func:`_cell_eval_fold`; otherwise that item is ``None``). With ``replicate``, the last
    item is the (metrics, deltas) pair of :func:`_replicate_evaluation` (otherwise ``None``).
    """
    import torch

    from .._model import PertTX

    adata, key = data.adata, data.perturbation_key
    fit_controls, reference = controls
    seed = int(settings["seed"]) + fold
    torch.manual_seed(seed)
    model_kwargs = {
        "d_model": settings["d_model"],
        "n_layers": settings["n_layers"],
        "n_heads": settings["n_heads"],
    }
    model_graph = graph if model_graph is None else model_graph
    uses_graph = model_graph is not None
    if uses_graph:
        model_kwargs["gene_graph"] = model_graph
        if id_table is not None:
            model_kwargs["id_table"] = id_table
    model_kwargs.update(settings.get("model_options", {}))
    model = PertTX(adata, **model_kwargs)
    started = time.perf_counter()
    model.train(
        max_epochs=settings["epochs"],
        holdout_perturbations=held,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        validation_size=settings["validation_size"],
        control_cells=np.flatnonzero(fit_controls),
        seed=seed,
        enable_progress_bar=False,
        callbacks=[_epoch_callback(update_epoch)],
    )
    train_s = time.perf_counter() - started

    labels = adata.obs[key].astype(str).to_numpy()
    train_cells = np.zeros(adata.n_obs, dtype=bool)
    train_cells[np.concatenate([model.train_indices, model.validation_indices])] = True
    separator = model._setup_args["label_separator"]
    subgroup = assign_subgroups(
        held, labels[train_cells], control_group=data.control_group, separator=separator
    )
    predictable = [p for p in held if _can_predict(model, p)]
    missing = [p for p in held if p not in predictable]
    predictions = {"PertTX": pd.DataFrame(columns=adata.var_names.astype(str), dtype=float)}
    if predictable:
        predictions["PertTX"] = model.predict_profiles(
            adata[fit_controls], predictable, profile=settings["pertx_profile"], seed=seed
        )
    evaluation = _evaluation_kwargs(
        data, settings, graph, gene_embedding, baseline_edges, train_cells, separator
    )
    result, deltas = metrics.evaluate_heldout(
        predictions,
        adata,
        key,
        data.control_group,
        held,
        fit_controls=fit_controls,
        reference_controls=reference,
        **evaluation,
    )
    replicate_tables = None
    if replicate:
        replicate_tables = _replicate_evaluation(
            predictions, data, held, fit_controls, reference, evaluation, seed
        )

    masks = {"control_fit": fit_controls, "control_reference": reference}
    masks.update({f"observed:{p}": labels == p for p in held})
    profiles = _mean_profiles(adata, masks, data.layer)
    if predictable:
        predicted = predictions["PertTX"].copy()
        predicted.index = [f"PertTX:{p}" for p in predicted.index]
        profiles = pd.concat([profiles, predicted.astype(np.float64)])
    delta_table = pd.concat(
        [frame.set_axis([f"{name}|{p}" for p in frame.index]) for name, frame in deltas.items()]
    )

    result.insert(0, "fold", fold)
    result.insert(1, "subgroup", result["perturbation"].map(subgroup).to_numpy())
    genes = set(adata.var_names.astype(str))
    measured = {p: any(g in genes for g in model._parse(p)) for p in held}
    result["target_measured"] = result["perturbation"].map(measured).astype(bool)
    history = _history_frame(model.history)
    cell_eval_tables, cell_eval_s = None, None
    if cell_eval and predictable:
        started = time.perf_counter()
        cell_eval_tables = _cell_eval_fold(
            model, data, predictable, fit_controls, reference, train_cells, settings, seed
        )
        cell_eval_s = round(time.perf_counter() - started, 1)
    info = {
        "fold": fold,
        "held_out": held,
        "n_held_out": len(held),
        "pertx_missing": missing,
        "uses_gene_graph": uses_graph,
        "train_seconds": round(train_s, 1),
        "n_train_cells": int(len(model.train_indices)),
        "n_validation_cells": int(len(model.validation_indices)),
        "n_fit_controls": int(fit_controls.sum()),
        "n_reference_controls": int(reference.sum()),
    }
    if cell_eval_s is not None:
        info["cell_eval_seconds"] = cell_eval_s
    if replicate_tables is not None:
        replicate_tables[0].insert(0, "fold", fold)
        replicate_tables[0].insert(1, "subgroup", replicate_tables[0]["perturbation"].map(subgroup))
    return result, profiles, delta_table, history, info, cell_eval_tables, replicate_tables


def _evaluation_kwargs(
    data: _Data,
    settings: dict[str, Any],
    graph,
    gene_embedding: pd.DataFrame | None,
    baseline_edges: dict[str, pd.DataFrame] | None,
    train_cells: np.ndarray,
    separator: str,
) -> dict[str, Any]:
    """Keyword arguments of a fold's :func:`pertx_scvi.metrics.evaluate_heldout`."""
    return {
        "train_mask": train_cells,
        "baselines": list(settings["baselines"]),
        "edges": baseline_edges if baseline_edges is not None else getattr(graph, "edges", None),
        "gene_embedding": gene_embedding,
        "layer": data.layer,
        "n_top_de": settings["n_top_de"],
        "seed": settings["seed"],
        "separator": separator,
        "return_deltas": True,
    }


def replicate_from_profiles(
    fold: int,
    held: list[str],
    data: _Data,
    settings: dict[str, Any],
    graph,
    gene_embedding: pd.DataFrame | None,
    controls: tuple[np.ndarray, np.ndarray],
    baseline_edges: dict[str, pd.DataFrame] | None,
    profiles: pd.DataFrame,
    separator: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The replicate evaluation of a fold finished before, from its stored PertTX profiles
    (``fold_<k>_profiles.csv.gz``: rows ``"PertTX:<label>"``) instead of a new training.

    The training cells are those :meth:`~pertx_scvi.PertTX.train` used: every cell whose label
    is not held out, of the controls the fitting half only.
    """
    adata, key = data.adata, data.perturbation_key
    fit_controls, reference = controls
    labels = adata.obs[key].astype(str).to_numpy()
    is_control = labels == str(data.control_group)
    train_cells = ~np.isin(labels, held) & (~is_control | fit_controls)
    rows = profiles.set_index("row")
    rows = rows[rows.index.str.startswith("PertTX:")].drop(columns="fold", errors="ignore")
    predicted = rows.set_axis(rows.index.str[len("PertTX:") :]).astype(np.float64)
    predicted.columns = predicted.columns.astype(str)
    evaluation = _evaluation_kwargs(
        data, settings, graph, gene_embedding, baseline_edges, train_cells, separator
    )
    seed = int(settings["seed"]) + fold
    result, deltas = _replicate_evaluation(
        {"PertTX": predicted}, data, held, fit_controls, reference, evaluation, seed
    )
    subgroup = assign_subgroups(
        held, labels[train_cells], control_group=data.control_group, separator=separator
    )
    result.insert(0, "fold", fold)
    result.insert(1, "subgroup", result["perturbation"].map(subgroup))
    return result, deltas


def _replicate_evaluation(
    predictions: dict[str, pd.DataFrame],
    data: _Data,
    held: list[str],
    fit_controls: np.ndarray,
    reference: np.ndarray,
    evaluation: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method scored against half of each held-out perturbation's cells, beside the
    other half as a prediction (``split_half``: the experiment repeated), for
    :func:`pertx_scvi.metrics.vcc_scores`. Returns (metrics, deltas) as the fold's own."""
    adata, key = data.adata, data.perturbation_key
    labels = adata.obs[key].astype(str).to_numpy()
    used = np.isin(labels, held) | fit_controls
    ceiling = metrics.SplitHalfCeiling(seed=seed, separator=evaluation["separator"])
    ceiling.fit(adata[used], key, data.control_group, data.layer)
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[used] = ceiling.eval_mask_
    rows = {}
    for label in held:  # a label with fewer than 2 cells has no replicate: it stays NaN
        try:
            rows[label] = ceiling.predict([label]).iloc[0]
        except ValueError:
            continue
    replicate = pd.DataFrame.from_dict(rows, orient="index", columns=ceiling.genes_)
    with_replicate = {**predictions, "split_half": replicate}
    result, deltas = metrics.evaluate_heldout(
        with_replicate,
        adata[keep],
        key,
        data.control_group,
        held,
        fit_controls=fit_controls[keep],
        reference_controls=reference[keep],
        **{**evaluation, "train_mask": evaluation["train_mask"][keep]},
    )
    delta_table = pd.concat(
        [frame.set_axis([f"{name}|{p}" for p in frame.index]) for name, frame in deltas.items()]
    )
    return result, delta_table


def _cell_eval_fold(
    model,
    data: _Data,
    perturbations: list[str],
    fit_controls: np.ndarray,
    reference: np.ndarray,
    train_cells: np.ndarray,
    settings: dict[str, Any],
    seed: int,
    chunk_size: int = 16,
) -> dict[str, pd.DataFrame]:
    """Score the fold with cell-eval: PertTX's predicted cells and the train-mean prediction
    against the held-out cells.

    PertTX predicts every held-out label from each fitting control (the values of
    ``pertx_profile``: ``X``, or the log-normalised sampled counts), subsampled to as many
    cells per label as were observed; its control cells are the fitting controls. The real
    file holds the held-out cells and the reference controls. The train-mean prediction
    (:func:`pertx_scvi.metrics.perturbed_mean_profile` of the fold's training cells, the
    cells ``train_mean`` is fitted on) gets the same cells.

    Returns
    -------
    dict
        ``per_perturbation`` (method, perturbation, metric, value) and ``score`` (metric,
        PertTX and train_mean means, ``from_baseline``: cell-eval's baseline-normalised score
        of PertTX against train mean; the row ``avg_score``), and ``errors`` (a one-column
        table of the metrics cell-eval could not compute).
    """
    import torch

    adata, key, control = data.adata, data.perturbation_key, data.control_group
    labels = adata.obs[key].astype(str).to_numpy()
    n_real = pd.Series(labels).value_counts()
    rng = np.random.default_rng(seed)
    sources = adata[fit_controls]
    parts = []
    for start in range(0, len(perturbations), chunk_size):
        chunk = perturbations[start : start + chunk_size]
        prediction = model.predict_perturbation(sources, chunk, seed=seed)
        predicted = prediction.obs["perturbation"].astype(str).to_numpy()
        rows = []
        for p in chunk:
            idx = np.flatnonzero(predicted == p)
            rows.append(rng.choice(idx, size=int(n_real[p]), replace=len(idx) < n_real[p]))
        part = prediction[np.sort(np.concatenate(rows))].copy()
        part.obs_names = [f"pred_{start}_{i}" for i in range(part.n_obs)]
        parts.append(part)
    pred = ad.concat(parts, merge="same") if len(parts) > 1 else parts[0]
    held = np.isin(labels, perturbations)
    fitting = train_cells & ~held & ((labels != control) | fit_controls)
    separator = model._setup_args["label_separator"]
    train_mean = metrics.perturbed_mean_profile(
        adata[fitting], key, control, data.layer, separator=separator
    )
    scores = metrics.score_with_cell_eval(
        pred,
        adata[held | reference],
        perturbation_key=key,
        control_group=control,
        baseline=train_mean,
        pred_controls=sources,
        layer=data.layer,
        pred_layer="counts" if settings["pertx_profile"] == "sampled" else None,
        num_threads=max(1, torch.get_num_threads()),
    )
    per_perturbation = scores.tidy("PertTX", "train_mean")
    # cell-eval's means over the fold's perturbations, from which it normalises the score.
    score = pd.DataFrame(
        {
            "PertTX": pd.to_numeric(scores.agg.loc["mean"], errors="coerce"),
            "train_mean": pd.to_numeric(scores.baseline_agg.loc["mean"], errors="coerce"),
        }
    )
    score = score.join(scores.score["from_baseline"], how="outer")
    order = [*scores.score.index, *[m for m in score.index if m not in scores.score.index]]
    score = score.reindex(order).rename_axis("metric").reset_index()
    score["cell_eval_version"] = scores.version
    errors = pd.DataFrame({"error": sorted(set(scores.errors))})
    return {"per_perturbation": per_perturbation, "score": score, "errors": errors}


def pool_discrimination(
    result: pd.DataFrame, deltas: pd.DataFrame, separator: str, control_group: str
) -> pd.DataFrame:
    """Rank every held-out perturbation of the run against all of them.

    ``result`` and ``deltas`` are the concatenated tables of the folds (``deltas`` with a
    ``fold`` column and rows ``"<method>|<label>"``). The per-fold ``discrimination`` rows
    become ``discrimination_fold``; ``discrimination`` is recomputed per method with
    :func:`pertx_scvi.metrics.pooled_discrimination` over all folds' perturbations (observed Δ
    of each perturbation against its own fold's reference controls).
    """
    out = result.copy()
    out.loc[out["metric"] == "discrimination", "metric"] = "discrimination_fold"
    template = out[out["metric"] == "discrimination_fold"]
    method, label = (
        deltas["row"].str.split("|", n=1).str[0],
        deltas["row"].str.split("|", n=1).str[1],
    )
    keyed = deltas.drop(columns="row").set_index([deltas["fold"], label]).drop(columns="fold")
    observed = keyed[(method == "observed").to_numpy()]
    frames = []
    for name in pd.unique(template["method"]):
        predicted = keyed[(method == name).to_numpy()].reindex(observed.index)
        scores = metrics.pooled_discrimination(
            predicted.set_axis(observed.index.get_level_values(1)),
            observed.set_axis(observed.index.get_level_values(1)),
            separator,
            control_group,
        ).set_axis(observed.index)
        pooled = template[template["method"] == name].copy()
        pairs = pd.MultiIndex.from_arrays([pooled["fold"], pooled["perturbation"]])
        pooled["value"] = scores.reindex(pairs).to_numpy()
        pooled["metric"] = "discrimination"
        frames.append(pooled)
    return pd.concat([out, *frames], ignore_index=True)


def _history_frame(history: dict) -> pd.DataFrame:
    columns = {}
    for name, values in (history or {}).items():
        series = values.iloc[:, 0] if isinstance(values, pd.DataFrame) else values
        columns[str(name)] = pd.to_numeric(pd.Series(series), errors="coerce")
    frame = pd.DataFrame(columns)
    frame.index.name = "epoch"
    return frame
