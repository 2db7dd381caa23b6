"""Context transfer: predict a perturbation in a cell line / type where it was not measured.

Screens with several contexts (``obs["cell_type"]``: cell lines or types) measure most
perturbations in every context. :func:`context_transfer` holds out (perturbation, context)
pairs, so that each held-out perturbation was measured in the other contexts, trains PertTX
on the rest and predicts each held-out pair from its own context's control cells, next to
the baselines of that question: ``train_mean`` (the mean of the context's training
perturbations), ``other_contexts_mean`` (the context's controls plus the perturbation's mean
effect in the other contexts, :func:`pertx_scvi.metrics._heldout.other_contexts_mean`) and
``control_mean``. Effects are taken against the controls of each pair's own context, split
into a fitting and a reference half per context
(``pertx_scvi.metrics.control_masks(..., context=...)``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import metrics
from .._labels import DEFAULT_SEPARATOR
from .._threads import keep_torch_threads
from ..metrics._heldout import context_labels, context_pairs, evaluate_heldout
from ..metrics._utils import check_labels
from ._fold import _epoch_callback, _history_frame
from ._run import DEFAULTS
from ._sources import ID_TABLE_FILE, _find, load_graph

__all__ = [
    "CONTEXT_BASELINES",
    "HEADLINE_METRICS",
    "ContextTransferResult",
    "context_folds",
    "context_transfer",
]

CONTEXT_BASELINES: tuple[str, ...] = (
    "control_mean",
    "train_mean",
    "train_mean_knockdown",
    "other_contexts_mean",
)
"""Baselines of :func:`context_transfer`, fitted per context on its training cells."""

HEADLINE_METRICS: tuple[str, ...] = (
    "pearson_delta",
    "pearson_delta_top20",
    "mse_top20",
    "discrimination",
)
"""Metrics of ``summary.md`` (``metrics.csv`` has every metric of
:func:`pertx_scvi.metrics.compare`)."""

_LABELS = {
    "pearson_delta": "Pearson Δ",
    "pearson_delta_top20": "Pearson Δ top-20 DE",
    "mse_top20": "MSE top-20 DE",
    "discrimination": "discrimination",
}


@dataclass
class ContextTransferResult:
    """What :func:`context_transfer` computed.

    Attributes
    ----------
    metrics
        Tidy table: ``fold``, ``method``, ``context``, ``perturbation``, ``metric``, ``value``,
        ``strong_effect``, ``split_half_r``, ``n_cells`` (``discrimination`` pooled per context
        over the folds, ``discrimination_fold`` within the fold).
    summary
        Mean and 95 % bootstrap interval per ``scope`` (a context, or ``"all"``), method and
        metric.
    paired
        :func:`pertx_scvi.metrics.paired_differences` of PertTX minus each baseline over the
        held-out pairs, per ``scope``.
    folds
        One row per fold: held-out pairs, training cells and seconds.
    out
        The output folder, or ``None``.
    """

    metrics: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    folds: pd.DataFrame
    out: Path | None = None


def context_folds(
    pairs: Sequence[tuple[str, str]],
    n_folds: int = 3,
    seed: int = 0,
) -> list[list[tuple[str, str]]]:
    """Folds of (context, perturbation) pairs for context transfer.

    The distinct perturbations are sorted, permuted with ``numpy.random.default_rng(seed)``
    and cut into ``n_folds`` groups (:func:`numpy.array_split`); the contexts are sorted and
    numbered ``0..C-1``. Fold ``k`` holds out, in context ``c``, the perturbations of group
    ``(c + k) mod n_folds``. Every pair is held out in exactly one fold, and in a fold a
    perturbation is held out only in the contexts ``c`` with ``(c + k) mod n_folds`` equal to its
    group: with ``n_folds >= 2`` never in two neighbouring contexts, so (with at least two
    contexts) it is still measured elsewhere, if it was measured in more than one context.

    Parameters
    ----------
    pairs
        The (context, perturbation) pairs that have cells.
    n_folds
        Number of folds, at least 2 and at most the number of perturbations.
    seed
        Seed of the permutation.

    Returns
    -------
    list of list of tuple
        Per fold, its held-out pairs (sorted by context, then in group order).
    """
    pairs = list(dict.fromkeys((str(c), str(p)) for c, p in pairs))
    perturbations = sorted({p for _, p in pairs})
    contexts = sorted({c for c, _ in pairs})
    n_folds = int(n_folds)
    if len(contexts) < 2:
        raise ValueError(f"context transfer needs at least two contexts, got {contexts}")
    if not 2 <= n_folds <= len(perturbations):
        raise ValueError(
            f"n_folds must be between 2 and the number of perturbations ({len(perturbations)}), "
            f"got {n_folds}"
        )
    order = np.random.default_rng(seed).permutation(len(perturbations))
    groups = [[perturbations[i] for i in part] for part in np.array_split(order, n_folds)]
    present = set(pairs)
    folds = []
    for k in range(n_folds):
        held = []
        for ci, c in enumerate(contexts):
            held += [(c, p) for p in groups[(ci + k) % n_folds] if (c, p) in present]
        folds.append(held)
    return folds


@keep_torch_threads()  # the metrics' numba kernels reset the thread count torch uses
def context_transfer(
    adata: AnnData,
    perturbation_key: str,
    control_group: str,
    context_key: str,
    n_folds: int = 3,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    graph: Any = None,
    out: str | os.PathLike | None = None,
    *,
    layer: str | None = None,
    baselines: Sequence[str] = CONTEXT_BASELINES,
    n_top_de: int = 20,
    n_boot: int = 1000,
    data_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
    data_name: str | None = None,
) -> ContextTransferResult:
    """Benchmark PertTX on perturbations held out in one context and measured in the others.

    1. The control cells of every context are split into a fitting and a reference half
       (``metrics.control_masks(..., context=context_key)``).
    2. Folds of (context, perturbation) pairs (:func:`context_folds`): fold ``k`` holds out, in
       each context ``c``, the perturbations of group ``(c + k) mod n_folds``.
    3. Per fold, PertTX is set up on (and trained with) every cell but the held-out pairs'
       cells and the reference controls, with ``cell_type_key=context_key`` (control sources
       are paired within their context); each held-out pair is predicted from its context's
       fitting controls (:meth:`~pertx_scvi.PertTX.predict_profiles`).
    4. :func:`pertx_scvi.metrics.evaluate_heldout` with ``context_key`` scores PertTX and the
       baselines, fitted per context on the same training cells, against each context's
       reference controls. ``discrimination`` then ranks each pair among every held-out pair
       of its context (all folds pooled, :func:`pertx_scvi.metrics.pooled_discrimination`).
    5. Means per context and overall, and PertTX minus each baseline paired over the held-out
       pairs (:func:`pertx_scvi.metrics.paired_differences`).

    Parameters
    ----------
    adata
        The screen: raw counts (``X`` or ``layers[layer]``) or log-normalised ``X`` with
        ``uns["log1p"]`` (then the model uses ``likelihood="mse"``); not modified.
    perturbation_key, control_group
        Label column and control label.
    context_key
        Column of ``adata.obs`` with the context (cell line / type) of every cell.
    n_folds
        Number of folds (groups of perturbations).
    seed
        Seed of the folds, the control split, training (``seed + fold``), prediction and the
        bootstrap.
    model_kwargs
        :class:`~pertx_scvi.PertTX` arguments over the benchmark defaults (``d_model`` 64,
        ``n_layers`` 2, ``n_heads`` 4).
    train_kwargs
        :meth:`~pertx_scvi.PertTX.train` arguments over the defaults (``max_epochs`` 2,
        ``batch_size`` 64, ``lr`` 1e-2, ``validation_size`` 0.1).
    graph
        Gene graph of PertTX: ``None``, a :class:`~pertx_scvi.GeneGraph`, or names / paths
        read by :func:`load_graph` (e.g. ``"go"``).
    out
        Folder for ``metrics.csv``, ``summary.csv``, ``summary.md``, ``paired.csv`` and
        ``folds.csv``; ``None`` writes nothing.
    layer
        Counts layer (``None``: ``X``).
    baselines
        Among ``control_mean``, ``train_mean``, ``train_mean_knockdown`` (and the other
        :data:`pertx_scvi.metrics.BASELINE_NAMES` without a graph) and
        ``other_contexts_mean``.
    n_top_de
        Top DE genes of the ``*_top`` metrics.
    n_boot
        Bootstrap resamples of the intervals.
    data_dir
        Folder with ``graphs/`` for graph names (default ``$PERTX_DATA_DIR``).
    threads
        Torch CPU threads during the run (default: unchanged).
    progress
        Log progress (rich) to stderr.
    command, data_name
        Command line and data description written at the top of ``summary.md``.

    Returns
    -------
    ContextTransferResult
        The tidy metrics, the summary, the paired differences and the folds.
    """
    import torch
    from rich.console import Console

    from .._model import PertTX

    wall_start = time.perf_counter()
    console = Console(stderr=True, quiet=not progress)
    n_threads = int(threads) if threads else torch.get_num_threads()
    key, control = str(perturbation_key), str(control_group)
    labels = check_labels(adata, key, control)
    contexts = context_labels(adata, context_key)
    pairs = context_pairs(adata, key, control, contexts)
    folds = context_folds(pairs, n_folds, seed)
    fit, reference = metrics.control_masks(adata, key, control, context=contexts, seed=seed)
    log_normalized = layer is None and metrics.is_log_normalized(adata)

    model_settings = {k: DEFAULTS[k] for k in ("d_model", "n_layers", "n_heads")}
    model_settings.update(model_kwargs or {})
    train_settings = {
        "max_epochs": DEFAULTS["epochs"],
        "batch_size": DEFAULTS["batch_size"],
        "lr": DEFAULTS["lr"],
        "validation_size": 0.1,
    }
    train_settings.update(train_kwargs or {})
    gene_graph, graph_names = _resolve_graph(graph, data_dir)
    if gene_graph is not None:
        model_settings.setdefault("gene_graph", gene_graph)
        if graph_names and "id_table" not in model_settings:
            try:
                model_settings["id_table"] = _find(ID_TABLE_FILE, data_dir)
            except FileNotFoundError:
                pass
    cell_pairs = pd.MultiIndex.from_arrays([contexts, labels])
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    console.log(
        f"context transfer: {len(pairs)} (context, perturbation) pairs in "
        f"{len(set(contexts))} contexts, {len(folds)} folds"
    )

    results, delta_frames, fold_rows = [], [], []
    for k, held in enumerate(folds):
        held_cells = cell_pairs.isin(held)
        unmeasured = _measured_elsewhere(held, cell_pairs[~held_cells])
        if unmeasured:
            console.log(f"fold {k}: not measured in another context: {unmeasured}")
        train_cells = ~held_cells & ~reference
        adata_train = adata[train_cells].copy()
        PertTX.setup_anndata(
            adata_train,
            perturbation_key=key,
            control_group=control,
            cell_type_key=context_key,
            layer=layer,
            is_log_normalized=log_normalized,
        )
        # scanpy's numba kernels (metrics, baselines) reset the OpenMP pool torch shares
        torch.set_num_threads(n_threads)
        torch.manual_seed(seed + k)
        model = PertTX(adata_train, **model_settings)
        n_epochs = int(train_settings["max_epochs"])
        started = time.perf_counter()

        def update(epoch: int, _k: int = k, _t0: float = started, _n: int = n_epochs) -> None:
            console.log(f"fold {_k}: epoch {epoch}/{_n} ({time.perf_counter() - _t0:.0f} s)")

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
            model.train(
                seed=seed + k,
                enable_progress_bar=False,
                callbacks=[_epoch_callback(update)],
                **train_settings,
            )
        train_s = time.perf_counter() - started
        predicted = _predict_pairs(model, adata, held, contexts, fit, seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            result, deltas = evaluate_heldout(
                {"PertTX": predicted},
                adata,
                key,
                control,
                held,
                fit_controls=fit,
                reference_controls=reference,
                train_mask=train_cells,
                baselines=list(baselines),
                layer=layer,
                n_top_de=n_top_de,
                seed=seed,
                return_deltas=True,
                context_key=context_key,
            )
        result.insert(0, "fold", k)
        results.append(result)
        for name, frame in deltas.items():
            delta_frames.append(frame.assign(method=name).set_index("method", append=True))
        fold_rows.append(
            {
                "fold": k,
                "held_out": "; ".join(f"{c}/{p}" for c, p in held),
                "n_held_out": len(held),
                "n_train_cells": int(len(model.train_indices)),
                "n_validation_cells": int(len(model.validation_indices)),
                "train_seconds": round(train_s, 1),
                "final_train_loss": _last(model.history, "train_loss"),
                "final_validation_loss": _last(model.history, "validation_loss"),
            }
        )
        pertx = result[(result["method"] == "PertTX") & (result["metric"] == "pearson_delta")]
        console.log(
            f"fold {k}: {len(held)} pairs held out, trained {train_s:.0f} s, "
            f"PertTX pearson_delta {pertx['value'].mean():.3f}"
        )

    df = _pool_discrimination(
        pd.concat(results, ignore_index=True), pd.concat(delta_frames), control
    )
    scopes = [*sorted(set(contexts)), "all"]
    summary = _summary(df, scopes, n_boot, seed)
    paired = _paired(df, scopes, n_boot, seed)
    fold_table = pd.DataFrame(fold_rows)
    wall = time.perf_counter() - wall_start
    out_path = None
    if out is not None:
        out_path = Path(out).expanduser()
        out_path.mkdir(parents=True, exist_ok=True)
        df.to_csv(out_path / "metrics.csv", index=False)
        summary.to_csv(out_path / "summary.csv", index=False)
        paired.to_csv(out_path / "paired.csv", index=False)
        fold_table.to_csv(out_path / "folds.csv", index=False)
        header = {
            "command": command or "pertx_scvi.benchmark.context_transfer(...)",
            "data": (data_name or "AnnData")
            + f": {adata.n_obs:,} cells x {adata.n_vars:,} genes, {len(pairs)} (context, "
            f"perturbation) pairs, contexts {', '.join(scopes[:-1])} (`{context_key}`)",
            "folds": f"{len(folds)} folds of pairs, seed {seed}: in fold k, context c holds out "
            "the perturbations of group (c + k) mod n; every pair held out once, each "
            "held-out perturbation measured in the other contexts",
            "controls": f"split per context: {int(fit.sum())} fitting controls (training, "
            f"predictions, baselines), {int(reference.sum())} reference controls (observed Δ)",
            "model": ", ".join(
                f"{k}={v}" for k, v in model_settings.items() if k not in ("gene_graph", "id_table")
            ),
            "training": ", ".join(f"{k}={v}" for k, v in train_settings.items())
            + f", {n_threads} torch thread(s)",
            "graph": ", ".join(map(str, graph_names)) or ("GeneGraph" if gene_graph else "none"),
            "baselines": ", ".join(baselines),
            "wall time": f"{wall / 60:.1f} min ({wall:.0f} s)",
        }
        (out_path / "summary.md").write_text(_summary_md(header, summary, paired, fold_table))
    console.log(f"context transfer done in {wall:.0f} s" + (f": {out_path}" if out_path else ""))
    return ContextTransferResult(df, summary, paired, fold_table, out_path)


def _resolve_graph(graph: Any, data_dir: str | os.PathLike | None) -> tuple[Any, list[str]]:
    from ..graphs import GeneGraph

    if graph is None or isinstance(graph, GeneGraph):
        return graph, []
    return load_graph(graph, None, data_dir)


def _measured_elsewhere(held: list[tuple[str, str]], training: pd.MultiIndex) -> list[str]:
    """Held-out pairs whose perturbation has no training cells in another context."""
    seen = set(zip(training.get_level_values(0), training.get_level_values(1), strict=True))
    by_label: dict[str, set[str]] = {}
    for c, p in seen:
        by_label.setdefault(p, set()).add(c)
    return [f"{c}/{p}" for c, p in held if not (by_label.get(p, set()) - {c})]


def _predict_pairs(
    model,
    adata: AnnData,
    held: list[tuple[str, str]],
    contexts: np.ndarray,
    fit: np.ndarray,
    seed: int,
) -> pd.DataFrame:
    """PertTX's profile of each held-out pair from its context's fitting controls."""
    frames = []
    for c in dict.fromkeys(c for c, _ in held):
        wanted = [p for cc, p in held if cc == c]
        sources = adata[fit & (contexts == c)]
        predictable = []
        for p in wanted:
            try:
                model.get_perturbation_embedding([p])
            except (ValueError, KeyError, IndexError):
                continue
            predictable.append(p)
        if not predictable:
            continue
        profiles = model.predict_profiles(sources, predictable, seed=seed)
        index = pd.MultiIndex.from_product([[c], predictable], names=["context", "perturbation"])
        frames.append(profiles.set_axis(index))
    genes = pd.Index(adata.var_names.astype(str))
    if not frames:
        empty = pd.MultiIndex.from_arrays([[], []], names=["context", "perturbation"])
        return pd.DataFrame(np.empty((0, len(genes))), index=empty, columns=genes)
    return pd.concat(frames).astype(np.float64)


def _last(history: dict | None, name: str) -> float | None:
    frame = _history_frame(history or {})
    if name not in frame.columns or frame[name].dropna().empty:
        return None
    return round(float(frame[name].dropna().iloc[-1]), 4)


def _pool_discrimination(df: pd.DataFrame, deltas: pd.DataFrame, control: str) -> pd.DataFrame:
    """Per context, rank each held-out pair among every held-out pair of that context (all
    folds); the per-fold values become ``discrimination_fold``."""
    out = df.copy()
    out.loc[out["metric"] == "discrimination", "metric"] = "discrimination_fold"
    template = out[out["metric"] == "discrimination_fold"]
    method = deltas.index.get_level_values("method")
    context = deltas.index.get_level_values("context")
    frames = []
    for c in pd.unique(context):
        observed = deltas[(method == "observed") & (context == c)].droplevel(["method", "context"])
        for name in pd.unique(template["method"]):
            rows = deltas[(method == name) & (context == c)].droplevel(["method", "context"])
            scores = metrics.pooled_discrimination(
                rows.reindex(observed.index), observed, DEFAULT_SEPARATOR, control
            )
            part = template[(template["method"] == name) & (template["context"] == c)].copy()
            part["value"] = part["perturbation"].map(scores).to_numpy(dtype=np.float64)
            part["metric"] = "discrimination"
            frames.append(part)
    return pd.concat([out, *frames], ignore_index=True)


def _scope(df: pd.DataFrame, scope: str) -> pd.DataFrame:
    part = df if scope == "all" else df[df["context"] == scope]
    # a pair is (context, perturbation): one row per method and metric
    return part.drop(columns="fold").assign(
        perturbation=part["context"].astype(str) + "/" + part["perturbation"].astype(str)
    )


def _summary(df: pd.DataFrame, scopes: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    frames = []
    for scope in scopes:
        table = metrics.summarize(_scope(df, scope), n_boot=n_boot, seed=seed)
        frames.append(table.assign(scope=scope))
    table = pd.concat(frames, ignore_index=True)
    return table[["scope", *[c for c in table.columns if c != "scope"]]]


def _paired(df: pd.DataFrame, scopes: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    frames = []
    for scope in scopes:
        table = metrics.paired_differences(
            _scope(df, scope), reference="PertTX", n_boot=n_boot, seed=seed
        )
        frames.append(table.assign(scope=scope))
    table = pd.concat(frames, ignore_index=True)
    return table[["scope", *[c for c in table.columns if c != "scope"]]]


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.{digits}f}"


def _mean_cell(row: pd.Series) -> str:
    return f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"


def _paired_cell(row: pd.Series) -> str:
    interval = f"[{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]"
    return f"{_signed(row['difference'])} {interval} {row['verdict']}"


def _scope_table(
    frame: pd.DataFrame,
    method_header: str,
    cell: Callable[[pd.Series], str],
    metric_list: Sequence[str] = HEADLINE_METRICS,
    with_n: bool = False,
) -> str:
    """Markdown table, one row per scope and method, one ``cell(row)`` per metric."""
    head = ["context", method_header, *(["n"] if with_n else [])]
    head += [_LABELS.get(m, m) for m in metric_list]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for scope in pd.unique(frame["scope"]):
        part = frame[frame["scope"] == scope]
        for method in pd.unique(part["method"]):
            rows = part[part["method"] == method].set_index("metric")
            cells = [str(scope), method]
            if with_n:
                n = rows["n"].reindex(list(metric_list)).max()
                cells.append(str(int(n)) if np.isfinite(n) else "0")
            cells += [cell(rows.loc[m]) if m in rows.index else "–" for m in metric_list]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary_md(
    header: dict[str, str], summary: pd.DataFrame, paired: pd.DataFrame, folds: pd.DataFrame
) -> str:
    text = ["# Context transfer\n"]
    text += [f"- **{name}**: {value}" for name, value in header.items()]
    text.append(
        "\nMetrics in the data's log-normalised space, each pair's effects against the "
        "controls of its own context. `discrimination` ranks a pair's predicted Δ among the "
        "observed Δ of every held-out pair of its context (all folds; chance (n + 1) / 2n). "
        "Intervals: 95 % percentile bootstrap over the held-out pairs; verdicts read the "
        "paired interval in the metric's direction (MSE: lower is better).\n"
    )
    text.append("## Means per context\n")
    text.append(_scope_table(summary, "method", _mean_cell, with_n=True))
    text.append("## PertTX minus each baseline, paired over the held-out pairs\n")
    text.append(_scope_table(paired, "PertTX minus", _paired_cell))
    text.append("## Folds\n")
    cols = ["fold", "n_held_out", "n_train_cells", "train_seconds", "final_train_loss"]
    cols += ["final_validation_loss"]
    text.append(_markdown(folds[cols]))
    for fold, held in zip(folds["fold"], folds["held_out"], strict=True):
        text.append(f"- fold {fold}: {held}")
    return "\n".join(text) + "\n"


def _markdown(frame: pd.DataFrame) -> str:
    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("–" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
