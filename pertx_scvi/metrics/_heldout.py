"""The held-out protocol: which cells fit the methods, which cells judge them.

This is the one place that builds the fitting and reference control masks; both
:meth:`pertx_scvi.PertTX.evaluate` and ``pertx benchmark`` score through
:func:`evaluate_heldout`, which takes predicted profiles (never a model). Nothing here imports
torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ._baselines import BASELINE_NAMES, fit_baselines
from ._metrics import discrimination_score, perturbed_mean_profile, split_control
from ._summary import compare, target_gene_positions
from ._utils import DEFAULT_CONTROL_TOKENS, DEFAULT_SEPARATOR, check_labels, control_tokens_for

__all__ = ["control_masks", "evaluate_heldout", "pooled_discrimination"]


def control_masks(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    *,
    trained_controls: np.ndarray | None = None,
    split: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fitting and reference control cells of a held-out evaluation.

    Predictions start from (and baselines are fitted on) the *fitting* controls; observed
    effects are taken against the *reference* controls. When both are the same cells, their
    sampling noise is common to predicted and observed Δ and inflates every correlation, so the
    controls are kept apart:

    1. ``trained_controls`` (a boolean mask of the controls a model was trained on) leaves
       some controls out: those are the reference, the trained ones fit;
    2. otherwise, with ``split`` (default), the controls are cut into two random halves
       (:func:`~pertx_scvi.metrics.split_control`, ``seed``);
    3. ``split=False`` shares them, with a warning.

    Returns
    -------
    fit, reference
        Boolean masks over ``adata.obs``.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    is_control = labels == str(control_group)
    if trained_controls is not None:
        trained = np.asarray(trained_controls, dtype=bool) & is_control
        if trained.any() and (is_control & ~trained).sum() >= 2:
            return trained, is_control & ~trained
    if split:
        return split_control(adata, perturbation_key, control_group, seed=seed)
    warnings.warn(
        "evaluating with shared controls: predicted and observed effects subtract the same "
        "control mean, whose noise then inflates the correlations (split_controls=True avoids it)",
        UserWarning,
        stacklevel=2,
    )
    return is_control, is_control


def evaluate_heldout(
    predictions: Mapping[str, pd.DataFrame],
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    perturbations: Sequence[str],
    *,
    fit_controls: np.ndarray,
    reference_controls: np.ndarray,
    train_mask: np.ndarray | None = None,
    baselines: Sequence[str] | Mapping[str, object] | None = BASELINE_NAMES,
    edges: pd.DataFrame | None = None,
    gene_embedding: pd.DataFrame | None = None,
    layer: str | None = None,
    n_top_de: int = 20,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
    return_deltas: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Score predicted profiles of held-out perturbations beside baselines fitted on the rest.

    Parameters
    ----------
    predictions
        Method name -> DataFrame (perturbations x genes) of predicted mean log1p(normalize_total
        1e4) profiles, made from the ``fit_controls`` cells. A method may lack some
        perturbations (it cannot predict them): its rows there are NaN and its
        ``discrimination`` is NaN (that score ranks a perturbation among all of them).
    adata
        Every cell (raw counts in ``X`` or ``layers[layer]``); not modified.
    perturbation_key, control_group
        Label column and control label.
    perturbations
        Held-out labels to score.
    fit_controls, reference_controls
        Boolean masks over ``adata.obs`` from :func:`control_masks`.
    train_mask
        Cells the methods may learn from (default: every cell whose label is not held out);
        of the controls only ``fit_controls`` are used.
    baselines
        Baseline names (:data:`~pertx_scvi.metrics.BASELINE_NAMES`; the graph-neighbour ones
        are skipped without ``edges``), or a dict name -> fitted baseline, or ``None``.
    edges, gene_embedding
        Gene graph of the graph-neighbour baselines; gene table of the linear one.
    layer, n_top_de, seed, separator, control_tokens
        As in :func:`~pertx_scvi.metrics.compare`.
    return_deltas
        Also return the Δ tables (see :func:`~pertx_scvi.metrics.compare`).

    Returns
    -------
    pandas.DataFrame
        The tidy table of :func:`~pertx_scvi.metrics.compare` (PertTX-like methods first,
        then the baselines), and the Δ tables with ``return_deltas``.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    perturbations = [str(p) for p in perturbations]
    if not perturbations:
        raise ValueError("no perturbations to evaluate")
    held = np.isin(labels, perturbations)
    is_control = labels == str(control_group)
    fit_controls = np.asarray(fit_controls, dtype=bool)
    reference_controls = np.asarray(reference_controls, dtype=bool)
    train_mask = ~held if train_mask is None else np.asarray(train_mask, dtype=bool) & ~held
    fitting = train_mask & (~is_control | fit_controls)
    adata_train = adata[fitting]

    fitted: dict[str, object] = {}
    if isinstance(baselines, Mapping):
        fitted = dict(baselines)
    elif baselines:
        names = [b for b in baselines if edges is not None or not b.startswith("graph_neighbour")]
        fitted = fit_baselines(
            adata_train,
            perturbation_key,
            control_group,
            names=names,
            edges=edges,
            gene_embedding=gene_embedding,
            layer=layer,
            separator=separator,
            control_tokens=control_tokens,
        )
    evaluated = held | fit_controls | reference_controls
    adata_eval = adata[evaluated]
    kwargs = {
        "control_mask": reference_controls[evaluated],
        "pred_control_mask": fit_controls[evaluated],
        "train_mean": perturbed_mean_profile(
            adata_train, perturbation_key, control_group, layer, separator, control_tokens
        ),
        "n_top_de": n_top_de,
        "layer": layer,
        "seed": seed,
        "separator": separator,
        "control_tokens": control_tokens,
        "return_deltas": True,
    }

    complete = {**{m: p for m, p in predictions.items() if _covers(p, perturbations)}, **fitted}
    partial = {m: p for m, p in predictions.items() if not _covers(p, perturbations)}
    frames, deltas = [], {}
    if complete:
        table, deltas = compare(
            complete, adata_eval, perturbation_key, control_group,
            perturbations=perturbations, **kwargs,
        )  # fmt: skip
        frames.append(table)
    for method, pred in partial.items():
        covered = [p for p in perturbations if p in set(pred.index.astype(str))]
        if not covered:
            continue
        table, part_deltas = compare(
            {method: pred}, adata_eval, perturbation_key, control_group,
            perturbations=covered, **kwargs,
        )  # fmt: skip
        table.loc[table["metric"] == "discrimination", "value"] = np.nan
        frames.append(table)
        deltas.setdefault("observed", part_deltas["observed"])
        deltas[method] = part_deltas[method].reindex(perturbations)
    if not frames:
        raise ValueError("nothing to evaluate: no method predicts any of the perturbations")
    result = pd.concat(frames, ignore_index=True)
    result = _fill_missing(result, [*predictions, *fitted], perturbations)
    order = [m for m in [*predictions, *fitted] if m in set(result["method"])]
    result["method"] = pd.Categorical(result["method"], categories=order)
    result = result.sort_values("method", kind="stable").reset_index(drop=True)
    result["method"] = result["method"].astype(str)
    return (result, deltas) if return_deltas else result


def _covers(prediction: pd.DataFrame, perturbations: Sequence[str]) -> bool:
    return set(perturbations) <= set(prediction.index.astype(str))


def _fill_missing(
    result: pd.DataFrame, methods: Sequence[str], perturbations: Sequence[str]
) -> pd.DataFrame:
    """NaN rows for (method, perturbation, metric) combinations a method could not predict."""
    per_label = result.drop_duplicates("perturbation").set_index("perturbation")
    per_label = per_label[["strong_effect", "split_half_r", "n_cells"]]
    metric_list = list(pd.unique(result["metric"]))
    rows = []
    for method in methods:
        scored = set(result.loc[result["method"] == method, "perturbation"])
        for p in sorted(set(perturbations) - scored):
            rows += [{"method": method, "perturbation": p, "metric": m} for m in metric_list]
    if not rows:
        return result
    missing = pd.DataFrame(rows).assign(value=np.nan).join(per_label, on="perturbation")
    return pd.concat([result, missing[result.columns]], ignore_index=True)


def pooled_discrimination(
    predicted_delta: pd.DataFrame,
    observed_delta: pd.DataFrame,
    separator: str = DEFAULT_SEPARATOR,
    control_group: str = "control",
) -> pd.Series:
    """:func:`~pertx_scvi.metrics.discrimination_score` over perturbations of several folds.

    Each held-out perturbation's predicted Δ is ranked against the observed Δ of *all*
    perturbations given, target genes left out. Rows are matched by label, or by position when
    both tables have the same index (a label held out in several folds can then appear more
    than once). Rows with NaN predictions (a method that could not predict them) get NaN and
    are not ranked.

    Returns
    -------
    pandas.Series
        Score per perturbation (index: that of ``observed_delta``).
    """
    observed = observed_delta.astype(np.float64)
    predicted = predicted_delta
    if not predicted.index.equals(observed.index):
        predicted = predicted.reindex(index=observed.index)
    predicted = predicted.reindex(columns=observed.columns).to_numpy(dtype=np.float64)
    ok = np.isfinite(predicted).all(axis=1)
    scores = np.full(len(observed), np.nan)
    if ok.sum() >= 2:
        labels = list(observed.index[ok])
        tokens = control_tokens_for(control_group, DEFAULT_CONTROL_TOKENS)
        exclude = target_gene_positions(labels, pd.Index(observed.columns), separator, tokens)
        scores[ok] = discrimination_score(predicted[ok], observed.to_numpy()[ok], exclude)
    return pd.Series(scores, index=observed.index, name="discrimination")
