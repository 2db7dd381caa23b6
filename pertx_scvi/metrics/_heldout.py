"""The held-out protocol: which cells fit the methods, which cells judge them.

This is the one place that builds the fitting and reference control masks; both
:meth:`pertx_scvi.PertTX.evaluate` and ``pertx benchmark`` score through
:func:`evaluate_heldout`, which takes predicted profiles (never a model). Nothing here imports
torch.

Screens with several contexts (cell lines / types, ``obs["cell_type"]``) are evaluated context
by context (``context_key``): each perturbation's observed and predicted effects are taken
against the controls of its own context, whose control cells are split into halves of their
own, and the baselines are fitted per context; :func:`other_contexts_mean` predicts a
perturbation in one context from its effects measured in the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ._baselines import BASELINE_NAMES, fit_baselines, training_profiles
from ._metrics import discrimination_score, perturbed_mean_profile, split_control
from ._summary import compare, target_gene_positions
from ._utils import (
    DEFAULT_CONTROL_TOKENS,
    DEFAULT_SEPARATOR,
    canonical_label,
    check_labels,
    control_tokens_for,
)

__all__ = [
    "CONTEXT_BASELINES",
    "context_labels",
    "context_pairs",
    "control_masks",
    "evaluate_heldout",
    "other_contexts_mean",
    "pooled_discrimination",
]

CONTEXT_BASELINES: tuple[str, ...] = ("other_contexts_mean",)
"""Baselines that need a context column (``evaluate_heldout(..., context_key=...)``):
``other_contexts_mean`` (:func:`other_contexts_mean`)."""

Pair = tuple[str, str]
"""A (context, perturbation label) pair."""


def control_masks(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    *,
    trained_controls: np.ndarray | None = None,
    split: bool = True,
    seed: int = 0,
    context: str | np.ndarray | pd.Series | None = None,
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

    With ``context`` (an ``obs`` column name such as ``"cell_type"``, or one label per cell) the
    rules hold within every context: each context's controls are split into halves of their
    own (so that both halves hold controls of every context), and ``trained_controls`` is used
    only when it leaves at least one fitting and two reference controls in every context that
    has controls (otherwise the split applies).

    Parameters
    ----------
    adata
        Cells with ``obs[perturbation_key]`` (and the context column).
    perturbation_key, control_group
        Label column and control label.
    trained_controls
        Boolean mask of the control cells a model was trained on, or ``None``.
    split
        Split the controls into halves when ``trained_controls`` does not decide.
    seed
        Seed of the split (each context's controls are permuted with it).
    context
        Context column or labels; ``None``: one context (the behaviour without contexts).

    Returns
    -------
    fit, reference
        Boolean masks over ``adata.obs``.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    is_control = labels == str(control_group)
    if context is not None:
        return _context_control_masks(
            adata, perturbation_key, control_group, context_labels(adata, context),
            is_control, trained_controls, split, seed,
        )  # fmt: skip
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


def _context_control_masks(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    contexts: np.ndarray,
    is_control: np.ndarray,
    trained_controls: np.ndarray | None,
    split: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`control_masks` within every context (see there)."""
    with_controls = [c for c in pd.unique(contexts) if (is_control & (contexts == c)).any()]
    if trained_controls is not None:
        trained = np.asarray(trained_controls, dtype=bool) & is_control
        if all(
            (trained & (contexts == c)).any()
            and (is_control & ~trained & (contexts == c)).sum() >= 2
            for c in with_controls
        ):
            return trained, is_control & ~trained
    if not split:
        warnings.warn(
            "evaluating with shared controls: predicted and observed effects subtract the same "
            "control mean, whose noise then inflates the correlations (split_controls=True "
            "avoids it)",
            UserWarning,
            stacklevel=3,
        )
        return is_control.copy(), is_control.copy()
    fit = np.zeros(adata.n_obs, dtype=bool)
    reference = np.zeros(adata.n_obs, dtype=bool)
    for c in with_controls:
        cells = np.flatnonzero(contexts == c)
        try:
            part_fit, part_ref = split_control(
                adata[cells], perturbation_key, control_group, seed=seed
            )
        except ValueError as err:
            raise ValueError(f"context {c!r}: {err}") from None
        fit[cells[part_fit]] = True
        reference[cells[part_ref]] = True
    return fit, reference


def context_labels(adata: ad.AnnData, context: str | np.ndarray | pd.Series) -> np.ndarray:
    """The context of every cell as strings: ``obs[context]`` or the labels given.

    Parameters
    ----------
    adata
        Cells.
    context
        Column of ``adata.obs`` (e.g. ``"cell_type"``) or one label per cell.

    Returns
    -------
    numpy.ndarray
        String array of length ``adata.n_obs``.
    """
    if isinstance(context, str):
        if context not in adata.obs.columns:
            raise ValueError(
                f"context key {context!r} is not a column of adata.obs "
                f"(columns: {list(adata.obs.columns)})"
            )
        values = adata.obs[context]
        if values.isna().any():
            raise ValueError(f"adata.obs[{context!r}] has missing values")
        return values.astype(str).to_numpy()
    values = np.asarray(context).astype(str)
    if values.shape != (adata.n_obs,):
        raise ValueError(f"context has shape {values.shape}; need one label per cell")
    return values


def context_pairs(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    context: str | np.ndarray | pd.Series,
    perturbations: Sequence[str | Pair] | None = None,
) -> list[Pair]:
    """(context, perturbation) pairs with cells, in order.

    Parameters
    ----------
    adata
        Cells.
    perturbation_key, control_group
        Label column and control label.
    context
        Context column or labels (:func:`context_labels`).
    perturbations
        Labels (each taken in every context where it has cells, contexts sorted) or
        ``(context, label)`` pairs (each must have cells); default every non-control label.

    Returns
    -------
    list of tuple
        ``(context, label)`` pairs, without repeats.
    """
    labels = check_labels(adata, perturbation_key, control_group)
    contexts = context_labels(adata, context)
    present = set(zip(contexts.tolist(), labels.tolist(), strict=True))
    if perturbations is None:
        perturbations = sorted({lb for lb in labels.tolist() if lb != str(control_group)})
    pairs: list[Pair] = []
    missing = []
    for item in perturbations:
        if isinstance(item, str):
            found = sorted(c for c, lb in present if lb == item)
            if not found:
                missing.append(item)
            pairs += [(c, item) for c in found]
        else:
            c, lb = (str(v) for v in item)
            if (c, lb) not in present:
                missing.append((c, lb))
            pairs.append((c, lb))
    if missing:
        raise ValueError(f"no cells for {missing[:10]} in adata (context, {perturbation_key})")
    if any(lb == str(control_group) for _, lb in pairs):
        raise ValueError(f"the control group {control_group!r} is not a perturbation to score")
    return list(dict.fromkeys(pairs))


def other_contexts_mean(
    adata_train: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    context: str | np.ndarray | pd.Series,
    pairs: Sequence[Pair],
    *,
    layer: str | None = None,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> pd.DataFrame:
    """Predict a perturbation in one context from its mean effect in the other contexts.

    With ``c̄_k`` the mean control profile of context ``k`` and ``x̄_{p,k}`` the mean profile of
    perturbation ``p``'s cells in context ``k`` (both over ``adata_train``, in
    log1p(normalize_total 1e4) space), the prediction of ``p`` in context ``c`` is

    ``x̂_{p,c} = c̄_c + (1/|K|) Σ_{k ∈ K} (x̄_{p,k} - c̄_k)``

    with ``K`` the other contexts where ``p`` has training cells (each context weighted
    equally; ``p``'s spellings ``A+B`` / ``B+A`` are one perturbation). Effects are taken against
    each context's own controls, so a shift between the contexts' baselines does not enter
    the effect. A pair whose perturbation has no training cells in another context gets no row.

    Parameters
    ----------
    adata_train
        Training cells: controls of every context of ``pairs`` and perturbed cells; raw counts
        in ``X`` / ``layers[layer]`` or log-normalised ``X`` with ``uns["log1p"]``.
    perturbation_key, control_group
        Label column and control label.
    context
        Context column or labels of ``adata_train`` (:func:`context_labels`).
    pairs
        ``(context, perturbation)`` pairs to predict.
    layer, separator, control_tokens
        Counts layer and label parsing.

    Returns
    -------
    pandas.DataFrame
        Rows indexed by ``(context, perturbation)`` (a two-level MultiIndex), genes as columns.
    """
    labels = check_labels(adata_train, perturbation_key, control_group)
    is_control = labels == str(control_group)
    contexts = context_labels(adata_train, context)
    tokens = control_tokens_for(control_group, control_tokens)
    effects: dict[str, pd.DataFrame] = {}
    controls: dict[str, np.ndarray] = {}
    wanted = {str(c) for c, _ in pairs}
    for c in pd.unique(contexts):
        cells = contexts == c
        if not (cells & is_control).any():
            if c in wanted:
                raise ValueError(f"context {c!r} has no control cells in adata_train")
            continue
        prof = training_profiles(
            adata_train[cells], perturbation_key, control_group, layer, separator, tokens
        )
        controls[c] = prof.control_mean
        effects[c] = prof.means - prof.control_mean[None, :]
    genes = pd.Index(adata_train.var_names.astype(str))
    rows, index = [], []
    for c, label in pairs:
        c, label = str(c), str(label)
        if c not in controls:
            raise ValueError(f"context {c!r} has no control cells in adata_train")
        key = canonical_label(label, separator, tokens)
        seen = [
            effects[k].loc[key].to_numpy() for k in effects if k != c and key in effects[k].index
        ]
        if not seen:
            continue
        rows.append(controls[c] + np.mean(seen, axis=0))
        index.append((c, label))
    names = ["context", "perturbation"]
    rows_index = (
        pd.MultiIndex.from_tuples(index, names=names)
        if index
        else pd.MultiIndex.from_arrays([[], []], names=names)
    )
    values = np.vstack(rows) if rows else np.empty((0, len(genes)))
    return pd.DataFrame(values, index=rows_index, columns=genes)


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
    context_key: str | None = None,
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
    context_key
        Column of ``adata.obs`` with each cell's context (cell line / type). Then every
        (context, perturbation) pair is scored on its own against the controls of its context:
        observed Δ against the context's ``reference_controls``, predicted Δ against its
        ``fit_controls`` (pass the masks of ``control_masks(..., context=context_key)``), DE
        genes and the strong-effect flag from the context's cells, and the baselines fitted on
        the context's training cells only (``train_mean``: the mean of the context's training
        perturbations). ``perturbations`` may then also be ``(context, label)`` pairs (a label
        alone means every context where it has cells); ``predictions`` are indexed by
        ``(context, perturbation)`` (a two-level MultiIndex, e.g. one
        :meth:`~pertx_scvi.PertTX.predict_profiles` per context from that context's fitting
        controls); ``baselines`` must be names, and may include ``"other_contexts_mean"``
        (:func:`other_contexts_mean`). ``discrimination`` ranks a pair among the pairs of its
        context. The table gains a ``context`` column, the Δ tables a ``(context,
        perturbation)`` index. A label is then no longer unique in the table: summarise
        per context, or pair the methods over ``context`` + ``perturbation`` (e.g.
        ``paired_differences(df.assign(perturbation=df.context + "/" + df.perturbation))``).

    Returns
    -------
    pandas.DataFrame
        The tidy table of :func:`~pertx_scvi.metrics.compare` (PertTX-like methods first,
        then the baselines), and the Δ tables with ``return_deltas``.
    """
    if context_key is not None:
        return _evaluate_by_context(
            predictions, adata, perturbation_key, control_group, perturbations,
            fit_controls=fit_controls, reference_controls=reference_controls,
            train_mask=train_mask, baselines=baselines, edges=edges,
            gene_embedding=gene_embedding, layer=layer, n_top_de=n_top_de, seed=seed,
            separator=separator, control_tokens=control_tokens, return_deltas=return_deltas,
            context_key=context_key,
        )  # fmt: skip
    if not isinstance(baselines, Mapping) and baselines:
        needs_context = [b for b in baselines if b in CONTEXT_BASELINES]
        if needs_context:
            raise ValueError(f"baseline(s) {needs_context} need context_key")
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


def _evaluate_by_context(
    predictions: Mapping[str, pd.DataFrame],
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    perturbations: Sequence[str | Pair],
    *,
    fit_controls: np.ndarray,
    reference_controls: np.ndarray,
    train_mask: np.ndarray | None,
    baselines: Sequence[str] | Mapping[str, object] | None,
    edges: pd.DataFrame | None,
    gene_embedding: pd.DataFrame | None,
    layer: str | None,
    n_top_de: int,
    seed: int,
    separator: str,
    control_tokens: Sequence[str],
    return_deltas: bool,
    context_key: str,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """:func:`evaluate_heldout` context by context (see its ``context_key``)."""
    if isinstance(baselines, Mapping):
        raise ValueError(
            "with context_key the baselines are fitted per context: pass their names, not "
            "fitted baselines"
        )
    labels = check_labels(adata, perturbation_key, control_group)
    contexts = context_labels(adata, context_key)
    pairs = context_pairs(adata, perturbation_key, control_group, contexts, list(perturbations))
    if not pairs:
        raise ValueError("no perturbations to evaluate")
    cell_pairs = pd.MultiIndex.from_arrays([contexts, labels])
    held = cell_pairs.isin(pairs)
    fit_controls = np.asarray(fit_controls, dtype=bool)
    reference_controls = np.asarray(reference_controls, dtype=bool)
    train_mask = ~held if train_mask is None else np.asarray(train_mask, dtype=bool) & ~held
    names = [str(b) for b in (baselines or [])]
    per_context_names = [b for b in names if b not in CONTEXT_BASELINES]
    extra: dict[str, pd.DataFrame] = {}
    if "other_contexts_mean" in names:
        is_control = labels == str(control_group)
        fitting = train_mask & (~is_control | fit_controls)
        extra["other_contexts_mean"] = other_contexts_mean(
            adata[fitting], perturbation_key, control_group, contexts[fitting], pairs,
            layer=layer, separator=separator, control_tokens=control_tokens,
        )  # fmt: skip
    frames, deltas = [], {}
    for c in dict.fromkeys(c for c, _ in pairs):
        cells = contexts == c
        held_here = [lb for cc, lb in pairs if cc == c]
        block = {m: _context_rows(p, c, m) for m, p in {**predictions, **extra}.items()}
        table, block_deltas = evaluate_heldout(
            block, adata[cells], perturbation_key, control_group, held_here,
            fit_controls=fit_controls[cells], reference_controls=reference_controls[cells],
            train_mask=train_mask[cells], baselines=per_context_names, edges=edges,
            gene_embedding=gene_embedding, layer=layer, n_top_de=n_top_de, seed=seed,
            separator=separator, control_tokens=control_tokens, return_deltas=True,
        )  # fmt: skip
        table.insert(1, "context", c)
        frames.append(table)
        for name, frame in block_deltas.items():
            keyed = frame.set_axis(
                pd.MultiIndex.from_product([[c], frame.index], names=["context", "perturbation"])
            )
            deltas.setdefault(name, []).append(keyed)
    result = pd.concat(frames, ignore_index=True)
    first = [str(m) for m in predictions]
    order = [*first, *[m for m in pd.unique(result["method"]) if m not in first and m not in extra]]
    order += [m for m in extra if m in set(result["method"])]
    result["method"] = pd.Categorical(result["method"], categories=order)
    result = result.sort_values("method", kind="stable").reset_index(drop=True)
    result["method"] = result["method"].astype(str)
    if not return_deltas:
        return result
    return result, {name: pd.concat(parts) for name, parts in deltas.items()}


def _context_rows(prediction: pd.DataFrame, context: str, method: str) -> pd.DataFrame:
    """The rows of ``prediction`` (indexed by context and perturbation) for one context."""
    if not isinstance(prediction, pd.DataFrame) or prediction.index.nlevels != 2:
        raise ValueError(
            f"prediction {method!r}: with context_key, predictions are DataFrames indexed by "
            "(context, perturbation) (a two-level MultiIndex)"
        )
    rows = prediction[prediction.index.get_level_values(0).astype(str) == str(context)]
    return rows.set_axis(pd.Index(rows.index.get_level_values(1).astype(str), name="perturbation"))


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
