"""``pertx benchmark``: PertTX against simple baselines on held-out perturbations, fold by fold.

For each fold the held-out perturbations never reach training; PertTX is trained on the rest and
scored with :meth:`pertx_scvi.PertTX.evaluate` next to the baselines of
:func:`pertx_scvi.metrics.fit_baselines`, all fitted on the same training cells. The results of
every fold are written to ``<out>/folds/fold_<k>.csv`` as soon as the fold finishes, so a rerun
with the same settings skips finished folds; ``<out>/metrics.csv`` (tidy, all folds),
``<out>/summary.md`` (means and 95 % bootstrap intervals) and plots under ``<out>/plots/`` are
written at the end.

Splits (:func:`kfold_perturbations`, :func:`gears_splits`):

* ``kfold``: the non-control labels are sorted, permuted with
  ``numpy.random.default_rng(seed)`` and cut into ``folds`` consecutive groups; every label is
  held out exactly once.
* ``gears`` (for data with combinations ``A+B``): the genes perturbed alone are cut into
  ``folds`` groups the same way; fold ``k`` holds out its genes (their single labels and every
  combination that contains one of them), plus the ``k``-th group of the remaining combinations.
  Each held-out label belongs to a GEARS subgroup (:func:`assign_subgroups`): ``unseen_single``,
  ``combo_seen0``, ``combo_seen1``, ``combo_seen2`` (the number of member genes that were
  perturbed alone in training).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from . import metrics
from ._evaluate import keep_torch_threads
from ._labels import DEFAULT_CONTROL_TOKENS, DEFAULT_SEPARATOR, parse_perturbation

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE_NAMES",
    "SUBGROUPS",
    "add_benchmark_arguments",
    "assign_subgroups",
    "benchmark",
    "gears_splits",
    "kfold_perturbations",
    "load_graph",
    "load_graphs",
    "run_benchmark",
]

BASELINE_NAMES = metrics.BASELINE_NAMES
SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
SPLITS = ("auto", "kfold", "gears")
GRAPH_FILES = {
    "go": "graphs/go_top20_jaccard.csv.gz",
    "omnipath": "graphs/omnipath_interactions.csv.gz",
    "trrust": "graphs/trrust_v2_human.tsv",
}
ID_TABLE_FILE = "graphs/human_gene_ids.tsv.gz"
GENE2GO_FILE = "graphs/human_gene2go.tsv.gz"
SIMULATED_GRAPH = "simulated"

DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "epochs": 2,
    "batch_size": 64,
    "lr": 1e-2,
}
"""Settings at the default size. Papalexi 2021 (20,729 cells) 5-fold with GO + OmniPath trains
on about 15,000 cells per fold: at 40-50 cells/s (one torch thread on a shared 2-core machine)
two epochs per fold keep the run under an hour."""

QUICK: dict[str, Any] = {
    "folds": 2,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-2,
}
"""Settings of ``--quick`` (a small model on small simulated data; CI)."""

QUICK_SIMULATION: dict[str, Any] = {
    "n_genes": 80,
    "n_regulators": 12,
    "n_modules": 4,
    "n_control_cells": 200,
    "n_cells_per_perturbation": 30,
    "n_combinations": 6,
    "targets_per_module": 10,
}
"""Simulation of ``--quick``: 12 regulators, 6 combinations, 740 cells x 80 genes."""

PLOT_METRICS = ("pearson_delta", "pearson_delta_top{n}", "mse_top{n}", "discrimination")


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
def _groups(items: Iterable[str], n_folds: int, seed: int, what: str) -> list[list[str]]:
    """Sort ``items``, permute them with ``default_rng(seed)``, cut into consecutive groups."""
    ordered = np.array(sorted({str(i) for i in items}), dtype=object)
    n_folds = int(n_folds)
    if n_folds < 2:
        raise ValueError(f"folds must be >= 2, got {n_folds}")
    if len(ordered) < n_folds:
        raise ValueError(f"cannot cut {len(ordered)} {what} into {n_folds} folds")
    permuted = np.random.default_rng(seed).permutation(ordered)
    return [list(map(str, group)) for group in np.array_split(permuted, n_folds)]


def _perturbation_labels(labels: Iterable[str], control_tokens: Sequence[str], separator: str):
    """Distinct non-control labels (``str``) of ``labels``."""
    return sorted(
        {
            str(label)
            for label in labels
            if parse_perturbation(str(label), separator, control_tokens)
        }
    )


def kfold_perturbations(
    labels: Iterable[str],
    n_folds: int = 5,
    seed: int = 0,
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> list[list[str]]:
    """K-fold split over perturbation labels: every label is held out in exactly one fold.

    The distinct non-control labels are sorted, permuted with
    ``numpy.random.default_rng(seed).permutation`` and cut into ``n_folds`` consecutive groups
    (:func:`numpy.array_split`: sizes differ by at most one).

    Parameters
    ----------
    labels
        Perturbation labels (per cell or distinct); control labels are dropped.
    n_folds
        Number of folds (>= 2, at most the number of labels).
    seed
        Seed of the permutation.
    control_group
        The control label (``"ctrl"`` is also read as control).
    separator
        Separator of combination labels.

    Returns
    -------
    list of list of str
        Held-out labels of each fold.

    Examples
    --------
    >>> kfold_perturbations(["A", "B", "C", "control"], n_folds=3)
    [['C'], ['B'], ['A']]
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    return _groups(_perturbation_labels(labels, tokens, separator), n_folds, seed, "labels")


def gears_splits(
    labels: Iterable[str],
    n_folds: int = 5,
    seed: int = 0,
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> list[list[str]]:
    """GEARS-style folds for data with combinations: unseen genes and unseen combinations.

    The genes that are perturbed alone (single labels) are sorted, permuted with
    ``default_rng(seed)`` and cut into ``n_folds`` consecutive groups ``G_k``; the combination
    labels are cut into ``n_folds`` groups ``C_k`` the same way (with ``seed + 1``). Fold ``k``
    holds out

    * the single labels of the genes in ``G_k`` (subgroup ``unseen_single``),
    * every combination with a member in ``G_k`` (``combo_seen0`` / ``combo_seen1``: none /
      one of its genes was perturbed alone in training), so that those genes are never seen,
    * the combinations of ``C_k`` without a member in ``G_k`` (``combo_seen2`` when both genes
      were perturbed alone in training).

    Every single label is held out exactly once; every combination at least once (as
    ``combo_seen2`` at most once). Use :func:`assign_subgroups` for the subgroup of each label.

    Parameters
    ----------
    labels
        Perturbation labels (per cell or distinct); control labels are dropped.
    n_folds
        Number of folds.
    seed
        Seed of the permutations.
    control_group, separator
        Label parsing.

    Returns
    -------
    list of list of str
        Held-out labels of each fold (sorted).
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    distinct = _perturbation_labels(labels, tokens, separator)
    genes_of = {label: parse_perturbation(label, separator, tokens) for label in distinct}
    singles = {label: genes[0] for label, genes in genes_of.items() if len(genes) == 1}
    combos = [label for label, genes in genes_of.items() if len(genes) > 1]
    if not singles:
        raise ValueError("gears splits need single-gene labels; use kfold_perturbations")
    gene_groups = _groups(set(singles.values()), n_folds, seed, "singly perturbed genes")
    combo_groups = (
        _groups(combos, n_folds, seed + 1, "combinations")
        if len(combos) >= n_folds
        else [combos if k == 0 else [] for k in range(n_folds)]
    )
    folds = []
    for unseen, combo_group in zip(gene_groups, combo_groups, strict=True):
        unseen_set = set(unseen)
        held = {label for label, gene in singles.items() if gene in unseen_set}
        held |= {c for c in combos if unseen_set.intersection(genes_of[c])}
        held |= set(combo_group)
        folds.append(sorted(held))
    return folds


def assign_subgroups(
    held_out: Iterable[str],
    train_labels: Iterable[str],
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> pd.Series:
    """GEARS subgroup of each held-out label, from the labels that training saw.

    A gene is *seen* when it was perturbed alone in training (a single-gene label among
    ``train_labels``). A held-out single label is ``unseen_single``; a held-out combination is
    ``combo_seen<m>`` with ``m`` its number of seen member genes (``combo_seen0``,
    ``combo_seen1``, ``combo_seen2``; a triple can reach ``combo_seen3``).

    Parameters
    ----------
    held_out
        Held-out labels.
    train_labels
        Labels of the training cells (per cell or distinct).
    control_group, separator
        Label parsing.

    Returns
    -------
    pandas.Series
        Subgroup per held-out label (index: the labels, in the given order).
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    seen = set()
    for label in pd.unique(np.asarray(list(train_labels), dtype=str)):
        genes = parse_perturbation(str(label), separator, tokens)
        if len(genes) == 1:
            seen.add(genes[0])
    out = {}
    for label in held_out:
        genes = parse_perturbation(str(label), separator, tokens)
        if len(genes) <= 1:
            out[str(label)] = "unseen_single"
        else:
            out[str(label)] = f"combo_seen{sum(g in seen for g in genes)}"
    return pd.Series(out, name="subgroup", dtype=object)


# ---------------------------------------------------------------------------------------------
# data and graphs
# ---------------------------------------------------------------------------------------------
@dataclass
class _Data:
    adata: AnnData
    name: str
    perturbation_key: str
    control_group: str
    layer: str | None
    network: pd.DataFrame | None = None
    is_real: bool = True
    notes: list[str] = field(default_factory=list)


def _load_data(
    data: str | os.PathLike | AnnData,
    perturbation_key: str | None,
    control_group: str | None,
    layer: str | None,
    quick: bool,
    seed: int,
    data_dir: str | os.PathLike | None = None,
) -> _Data:
    from . import datasets

    if isinstance(data, AnnData):
        return _Data(
            data,
            f"AnnData ({data.n_obs} cells x {data.n_vars} genes)",
            perturbation_key or "perturbation",
            control_group or "control",
            layer,
        )
    name = os.fspath(data)
    if name == "simulated":
        sim = {**QUICK_SIMULATION} if quick else {}
        adata, _, network = datasets.simulate(seed=seed, **sim)
        what = ", ".join(f"{k}={v}" for k, v in sim.items()) or "default size"
        return _Data(
            adata,
            f"simulated (px.datasets.simulate, {what}, seed={seed})",
            "perturbation",
            "control",
            None,
            network=network,
            is_real=False,
        )
    if name in ("papalexi2021", "papalexi"):
        return _Data(
            datasets.papalexi2021(data_dir),
            "papalexi2021 (Papalexi et al. 2021, THP-1 CRISPR KO subset)",
            "perturbation",
            "control",
            None,
        )
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {name!r} is neither 'simulated', 'papalexi2021' nor an existing .h5ad file"
        )
    import anndata as ad

    adata = ad.read_h5ad(path)
    return _Data(
        adata, str(path), perturbation_key or "perturbation", control_group or "control", layer
    )


def _split_names(spec: str | Sequence[Any]) -> list[Any]:
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    return list(spec)


def load_graph(
    spec: str | os.PathLike | Sequence[Any] | Any | None,
    network: pd.DataFrame | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """Gene graph from names and/or paths (united), as ``pertx benchmark --graph`` reads it.

    The union of the parts of :func:`load_graphs`; see there for ``spec``.

    Returns
    -------
    tuple
        ``(graph, names)``: the united :class:`~pertx_scvi.GeneGraph` (``None`` without a
        graph) and the names of its parts.
    """
    from .graphs import GeneGraph

    graphs, names = load_graphs(spec, network, data_dir)
    if not graphs:
        return None, []
    return (graphs[0] if len(graphs) == 1 else GeneGraph.union(*graphs)), names


def load_graphs(
    spec: str | os.PathLike | Sequence[Any] | Any | None,
    network: pd.DataFrame | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """Gene graphs from names and/or paths, one per item, as ``pertx benchmark --graph`` reads.

    Parameters
    ----------
    spec
        ``None`` / ``"none"``: no graph. Otherwise a comma-separated string or a list of items,
        each a :class:`~pertx_scvi.GeneGraph`, a name or a path: ``go`` (GEARS GO graph
        ``graphs/go_top20_jaccard.csv.gz``), ``omnipath``
        (``graphs/omnipath_interactions.csv.gz``, ids mapped with
        ``graphs/human_gene_ids.tsv.gz``), ``trrust`` (``graphs/trrust_v2_human.tsv``), all
        looked up under ``$PERTX_DATA_DIR`` (:func:`pertx_scvi.datasets.find_data_file`);
        ``simulated`` (the simulator's network, given as ``network``); or a file that
        :meth:`~pertx_scvi.GeneGraph.read` understands.
    network
        The simulated network (``source, target, weight`` with signed weights).
    data_dir
        Folder holding ``graphs/`` (default ``$PERTX_DATA_DIR``).

    Returns
    -------
    tuple
        ``(graphs, names)``: a list of :class:`~pertx_scvi.GeneGraph` (empty without a graph)
        and their names.
    """
    from .graphs import GeneGraph

    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return [], []
    if isinstance(spec, GeneGraph):
        return [spec], ["GeneGraph"]
    items = _split_names(spec) if isinstance(spec, str | list | tuple) else [spec]
    graphs, names = [], []
    for item in items:
        if isinstance(item, GeneGraph):
            graphs.append(item)
            names.append("GeneGraph")
            continue
        key = os.fspath(item)
        if key == SIMULATED_GRAPH:
            if network is None:
                raise ValueError("--graph simulated needs --data simulated")
            edges = network.assign(abs_weight=network["weight"].abs())
            edges = edges[edges["abs_weight"] > 0]
            graphs.append(
                GeneGraph.from_edges(
                    edges, weight="abs_weight", sign="weight", relation="simulated"
                )
            )
        elif key in GRAPH_FILES:
            path = _find(GRAPH_FILES[key], data_dir)
            if key == "go":
                graphs.append(GeneGraph.from_gears_go(path))
            else:
                try:
                    id_table = _find(ID_TABLE_FILE, data_dir)
                except FileNotFoundError:
                    id_table = None
                loader = GeneGraph.from_omnipath if key == "omnipath" else GeneGraph.from_trrust
                graphs.append(loader(path, id_table=id_table))
        else:
            path = Path(key).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"--graph item {key!r} is neither one of {sorted(GRAPH_FILES)}, "
                    f"{SIMULATED_GRAPH!r} nor an existing file"
                )
            graphs.append(GeneGraph.read(path))
        names.append(key)
    return graphs, names


def _resolve_graph_spec(graph: Any, data: _Data, data_dir: str | os.PathLike | None) -> Any:
    if not (isinstance(graph, str) and graph.strip().lower() == "auto"):
        return graph
    if data.network is not None:
        return SIMULATED_GRAPH
    try:
        _find(GRAPH_FILES["go"], data_dir)
    except FileNotFoundError:
        data.notes.append("--graph auto: no GO graph found, running without a graph")
        return None
    return "go"


def _find(relative: str, data_dir: str | os.PathLike | None) -> Path:
    from . import datasets

    return datasets.find_data_file(relative, data_dir)


def _linear_embedding(
    choice: str,
    data: _Data,
    perturbation_genes: Sequence[str],
    data_dir: str | os.PathLike | None,
) -> tuple[pd.DataFrame | None, str]:
    """GO gene embedding of the perturbed genes for the linear baseline, or None (PCA)."""
    choice = str(choice).lower()
    if choice not in ("auto", "go", "pca"):
        raise ValueError(f"linear_embedding must be 'auto', 'go' or 'pca', got {choice!r}")
    if choice == "pca" or (choice == "auto" and not data.is_real):
        return None, "pca"
    try:
        path = _find(GENE2GO_FILE, data_dir)
    except FileNotFoundError:
        if choice == "go":
            raise
        data.notes.append("linear baseline: no GO annotation file found, PCA gene embedding")
        return None, "pca"
    table = metrics.go_gene_embedding(path)
    names = {g: g if g in table.index else None for g in perturbation_genes}
    try:
        from .graphs._id_mapping import load_id_table, resolve_names

        names = resolve_names(
            perturbation_genes, table.index, load_id_table(_find(ID_TABLE_FILE, data_dir))
        )
    except FileNotFoundError:
        pass
    found = {g: n for g, n in names.items() if n is not None}
    if choice == "auto" and len(found) < 0.5 * max(len(perturbation_genes), 1):
        data.notes.append(
            f"linear baseline: only {len(found)} of {len(perturbation_genes)} perturbed genes "
            "have GO annotations, PCA gene embedding used"
        )
        return None, "pca"
    embedding = table.loc[list(found.values())]
    embedding.index = pd.Index(list(found), name="gene")
    missing = [g for g in perturbation_genes if g not in found]
    label = f"go ({len(found)} of {len(perturbation_genes)} perturbed genes annotated)"
    if missing:
        label += f"; without annotation: {', '.join(missing[:10])}"
    return embedding, label


# ---------------------------------------------------------------------------------------------
# one fold
# ---------------------------------------------------------------------------------------------
def _model_accepts(name: str) -> bool:
    from ._model import PertTX

    return name in inspect.signature(PertTX.__init__).parameters


def _model_accepts_graph() -> bool:
    return _model_accepts("gene_graph")


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
    control_cells: np.ndarray | None,
    update_epoch,
    id_table: Path | None = None,
    model_graph: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train and evaluate one fold: (metrics, profiles, history, info).

    ``graph`` (one GeneGraph) serves the graph-neighbour baseline; ``model_graph`` (a GeneGraph
    or a list, one view each; default ``graph``) is passed to PertTX when it accepts one.
    """
    import torch

    from ._evaluate import predicted_profiles
    from ._model import PertTX

    adata, key = data.adata, data.perturbation_key
    seed = int(settings["seed"]) + fold
    torch.manual_seed(seed)
    model_kwargs = {
        "d_model": settings["d_model"],
        "n_layers": settings["n_layers"],
        "n_heads": settings["n_heads"],
    }
    model_graph = graph if model_graph is None else model_graph
    uses_graph = model_graph is not None and _model_accepts_graph()
    if uses_graph:
        model_kwargs["gene_graph"] = model_graph
        if id_table is not None and _model_accepts("id_table"):
            model_kwargs["id_table"] = id_table
    model = PertTX(adata, **model_kwargs)
    started = time.perf_counter()
    model.train(
        max_epochs=settings["epochs"],
        holdout_perturbations=held,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        validation_size=settings["validation_size"],
        control_cells=control_cells,
        seed=seed,
        enable_progress_bar=False,
        callbacks=[_epoch_callback(update_epoch)],
    )
    train_s = time.perf_counter() - started

    labels = adata.obs[key].astype(str).to_numpy()
    train_cells = np.zeros(adata.n_obs, dtype=bool)
    train_cells[np.concatenate([model.train_indices, model.validation_indices])] = True
    subgroup = assign_subgroups(
        held,
        labels[train_cells],
        control_group=data.control_group,
        separator=model._setup_args["label_separator"],
    )

    predictable = [p for p in held if _can_predict(model, p)]
    missing = [p for p in held if p not in predictable]
    baselines = list(settings["baselines"])
    if graph is None:
        baselines = [b for b in baselines if b != "graph_neighbour"]
    is_control = labels == data.control_group
    fit_controls = is_control & train_cells
    reference = is_control & ~train_cells
    if not reference.any():
        reference = fit_controls

    profile_kind = settings["pertx_profile"]
    if profile_kind == "mean" and not missing:
        # The model's own evaluation (PertTX profile = log1p of the predicted mean).
        result = model.evaluate(
            perturbations=held,
            baselines=baselines,
            gene_graph=graph,
            gene_embedding=gene_embedding,
            n_top_de=settings["n_top_de"],
            seed=settings["seed"],
            profile="mean",
        )
        predicted = predicted_profiles(model, adata[fit_controls], held, profile="mean")
    else:
        predicted = None
        if predictable:
            sources = adata[fit_controls]
            predicted = predicted_profiles(
                model, sources, predictable, profile=profile_kind, seed=seed
            )
        result = _evaluate_fold(
            model, held, predicted, baselines, graph, gene_embedding, settings, train_cells
        )

    masks = {"control_fit": fit_controls, "control_reference": reference}
    masks.update({f"observed:{p}": labels == p for p in held})
    profiles = _mean_profiles(adata, masks, data.layer)
    if predicted is not None:
        predicted = predicted.copy()
        predicted.index = [f"PertTX:{p}" for p in predicted.index]
        profiles = pd.concat([profiles, predicted.astype(np.float64)])

    result.insert(0, "fold", fold)
    result.insert(1, "subgroup", result["perturbation"].map(subgroup).to_numpy())
    history = _history_frame(model.history)
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
    return result, profiles, history, info


def _evaluate_fold(
    model,
    held: list[str],
    predicted: pd.DataFrame | None,
    baselines: list[str],
    graph,
    gene_embedding: pd.DataFrame | None,
    settings: dict[str, Any],
    train_cells: np.ndarray,
) -> pd.DataFrame:
    """Score PertTX's ``predicted`` profiles and the baselines on the held-out labels.

    The same cells and masks as :meth:`pertx_scvi.PertTX.evaluate`: the baselines are fitted on
    the model's training and validation cells, the predicted Δ is taken against the control
    cells training used and the observed Δ against the others. When ``predicted`` lacks some
    held-out labels (PertTX cannot embed them), the baselines are still scored on every label,
    PertTX's rows for the missing ones are NaN and its ``discrimination`` is NaN (the score
    ranks a perturbation among all evaluated ones).
    """
    adata = model.adata
    setup = model._setup_args
    key, control = setup["perturbation_key"], str(setup["control_group"])
    labels = adata.obs[key].astype(str).to_numpy()
    is_control = labels == control
    fit_controls = is_control & train_cells
    reference = is_control & ~train_cells
    if not reference.any():
        reference = fit_controls
    adata_train = adata[train_cells]
    fitted = metrics.fit_baselines(
        adata_train,
        key,
        control,
        names=baselines,
        edges=None if graph is None else graph.edges,
        gene_embedding=gene_embedding,
        layer=setup["layer"],
        separator=setup["label_separator"],
    )
    evaluated = np.isin(labels, held) | fit_controls | reference
    kwargs = {
        "control_mask": reference[evaluated],
        "pred_control_mask": fit_controls[evaluated],
        "train_mean": metrics.perturbed_mean_profile(
            adata_train, key, control, layer=setup["layer"], separator=setup["label_separator"]
        ),
        "n_top_de": settings["n_top_de"],
        "layer": setup["layer"],
        "seed": settings["seed"],
        "separator": setup["label_separator"],
    }
    adata_eval = adata[evaluated]
    covered = [] if predicted is None else [p for p in held if p in predicted.index]
    if len(covered) == len(held):
        predictions = {"PertTX": predicted, **fitted}
        return metrics.compare(predictions, adata_eval, key, control, perturbations=held, **kwargs)
    frames = []
    if covered:
        part = metrics.compare(
            {"PertTX": predicted}, adata_eval, key, control, perturbations=covered, **kwargs
        )
        part.loc[part["metric"] == "discrimination", "value"] = np.nan
        frames.append(part)
    if not fitted:
        if not frames:
            raise ValueError("nothing to evaluate: PertTX cannot predict any held-out label")
        return frames[0]
    base = metrics.compare(fitted, adata_eval, key, control, perturbations=held, **kwargs)
    per_label = base.drop_duplicates("perturbation").set_index("perturbation")
    per_label = per_label[["strong_effect", "split_half_r", "n_cells"]]
    absent = [p for p in held if p not in covered]
    rows = pd.DataFrame(
        [
            {"method": "PertTX", "perturbation": p, "metric": m, "value": np.nan}
            for p in absent
            for m in pd.unique(base["metric"])
        ]
    ).join(per_label, on="perturbation")
    result = pd.concat([*frames, rows, base], ignore_index=True)
    return result[base.columns]


def _history_frame(history: dict) -> pd.DataFrame:
    columns = {}
    for name, values in (history or {}).items():
        series = values.iloc[:, 0] if isinstance(values, pd.DataFrame) else values
        columns[str(name)] = pd.to_numeric(pd.Series(series), errors="coerce")
    frame = pd.DataFrame(columns)
    frame.index.name = "epoch"
    return frame


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _fmt(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return "n/a"
    if pd.isna(row["ci_low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _markdown_table(summary: pd.DataFrame, metric_order: Sequence[str]) -> str:
    """Metrics (rows) x methods (columns), ``mean [low, high]``, the best mean in bold."""
    from .pl._summary import lower_is_better

    methods = list(pd.unique(summary["method"]))
    lines = [
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in metric_order:
        rows = summary[summary["metric"] == metric].set_index("method").reindex(methods)
        if rows["mean"].isna().all():
            continue
        means = rows["mean"].to_numpy(dtype=np.float64)
        best = np.nanargmin(means) if lower_is_better(metric) else np.nanargmax(means)
        cells = []
        for i, method in enumerate(methods):
            text = _fmt(rows.loc[method])
            cells.append(f"**{text}**" if i == best and text != "n/a" else text)
        arrow = " (↓)" if lower_is_better(metric) else ""
        lines.append(f"| {metric}{arrow} | " + " | ".join(cells) + " |")
    n = summary.groupby("method", sort=False)["n"].max().reindex(methods)
    lines.append("| n perturbations | " + " | ".join(str(int(v)) for v in n.fillna(0)) + " |")
    return "\n".join(lines)


def _summaries(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Summaries of all, strong-effect, other and per-subgroup perturbations (column ``set``)."""
    parts = [("all", df)]
    strong = df["strong_effect"].astype(bool)
    if 0 < strong.sum() < len(df):
        parts += [("strong_effect", df[strong]), ("other", df[~strong])]
    subgroups = [s for s in pd.unique(df["subgroup"]) if isinstance(s, str)]
    if len(subgroups) > 1:
        parts += [(f"subgroup:{s}", df[df["subgroup"] == s]) for s in sorted(subgroups)]
    frames = []
    for name, part in parts:
        if part.empty:
            continue
        summary = metrics.summarize(part, n_boot=n_boot, seed=seed)
        summary.insert(0, "set", name)
        frames.append(summary)
    return pd.concat(frames, ignore_index=True)


def _write_summary_md(
    path: Path,
    summary: pd.DataFrame,
    df: pd.DataFrame,
    header: dict[str, Any],
    infos: list[dict[str, Any]],
    metric_order: Sequence[str],
) -> None:
    lines = ["# PertTX benchmark", ""]
    lines += ["```", header["command"], "```", ""]
    for key in (
        "wall time",
        "data",
        "splits",
        "controls",
        "graph",
        "model",
        "training",
        "baselines",
        "metrics",
    ):
        if header.get(key):
            lines.append(f"- **{key}**: {header[key]}")
    lines.append("")
    titles = {
        "all": "All held-out perturbations",
        "strong_effect": "Strong-effect perturbations (split-half r of the observed Δ > 0.5)",
        "other": "Other perturbations (weak or irreproducible effects)",
    }
    for name in pd.unique(summary["set"]):
        part = summary[summary["set"] == name]
        title = titles.get(name, f"Subgroup {name.split(':', 1)[-1]}")
        labels = df if name == "all" else _subset(df, name)
        n_labels = labels[["fold", "perturbation"]].drop_duplicates().shape[0]
        lines += [f"## {title} ({n_labels})", "", _markdown_table(part, metric_order), ""]
        if name == "strong_effect":
            shown = sorted(pd.unique(labels["perturbation"]))
            lines += [f"Strong-effect perturbations: {', '.join(shown)}", ""]
        if name == "all" and "strong_effect" not in set(summary["set"]):
            kind = "strong" if df["strong_effect"].astype(bool).all() else "weak"
            lines += [
                f"Every held-out perturbation has a {kind} effect (split-half r of the observed "
                "Δ above / below 0.5), so there is no separate strong-effect table.",
                "",
            ]
    lines += [
        "Mean over held-out perturbations with a 95 % percentile bootstrap interval "
        "(`pertx_scvi.metrics.summarize`, resampling perturbations; every method resampled "
        "identically). Bold: best mean; (↓): lower is better. Metrics: "
        "`pertx_scvi.metrics.compare` and docs/benchmark.md.",
        "",
        "## Folds",
        "",
        "| fold | held out | train cells | train s | PertTX could not predict |",
        "|---|---|---|---|---|",
    ]
    for info in infos:
        held = ", ".join(info["held_out"][:12]) + (" ..." if len(info["held_out"]) > 12 else "")
        missing = ", ".join(info.get("pertx_missing", [])) or "-"
        lines.append(
            f"| {info['fold']} | {held} | {info.get('n_train_cells', '?')} | "
            f"{info.get('train_seconds', '?')} | {missing} |"
        )
    lines += ["", *_per_fold_tables(df, metric_order)]
    notes = header.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    path.write_text("\n".join(lines) + "\n")


PER_FOLD_METRICS = ("pearson_delta", "pearson_delta_top", "mse_top", "discrimination")


def _per_fold_tables(df: pd.DataFrame, metric_order: Sequence[str]) -> list[str]:
    """Markdown lines: per headline metric, the mean over each fold's perturbations per method
    (rows) and fold (columns), with the mean of the folds."""
    lines = ["## Per fold", "", "Mean over the fold's held-out perturbations.", ""]
    headline = [m for m in metric_order if m.rstrip("0123456789") in PER_FOLD_METRICS]
    methods = list(pd.unique(df["method"]))
    for metric in headline:
        part = df[df["metric"] == metric]
        if part.empty:
            continue
        table = part.groupby(["method", "fold"])["value"].mean().unstack("fold")
        table = table.reindex([m for m in methods if m in table.index])
        table["mean of folds"] = table.mean(axis=1)
        header = ["method", *[f"fold {c}" for c in table.columns[:-1]], "mean of folds"]
        lines += [f"### {metric}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for method, row in table.iterrows():
            cells = ["" if pd.isna(v) else f"{v:.3f}" for v in row]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _subset(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if name == "strong_effect":
        return df[df["strong_effect"].astype(bool)]
    if name == "other":
        return df[~df["strong_effect"].astype(bool)]
    if name.startswith("subgroup:"):
        return df[df["subgroup"] == name.split(":", 1)[1]]
    return df


def _plot_all(
    out: Path,
    summary: pd.DataFrame,
    profiles: pd.DataFrame,
    histories: dict[int, pd.DataFrame],
    n_top_de: int,
    df: pd.DataFrame,
) -> list[Path]:
    """Write the benchmark plots; return their paths."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover - a GUI backend already in use
            pass
    import matplotlib.pyplot as plt

    from . import pl

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = [m.format(n=n_top_de) for m in PLOT_METRICS]
    for name in ("all", "strong_effect"):
        part = summary[summary["set"] == name]
        metric_list = [m for m in wanted if m in set(part["metric"])]
        if part.empty or not metric_list:
            continue
        path = plots / f"metric_bars_{name}.png"
        fig = pl.metric_bars(
            part.drop(columns="set"),
            save=path,
            metrics=metric_list,
            title=f"{name.replace('_', ' ')} perturbations: mean and 95 % interval",
        )
        plt.close(fig)
        written.append(path)
    all_metrics = summary[summary["set"] == "all"].drop(columns="set")
    if not all_metrics.empty:
        path = plots / "metric_bars_all_metrics.png"
        plt.close(pl.metric_bars(all_metrics, save=path))
        written.append(path)

    if not profiles.empty:
        fold_of = profiles["fold"].to_numpy()
        rows = pd.Index(profiles["row"].astype(str))
        values = profiles.drop(columns=["fold", "row"])
        predicted, observed, c_fit, c_ref = {}, {}, {}, {}
        for fold in pd.unique(fold_of):
            sel = fold_of == fold
            fold_rows, fold_values = rows[sel], values[sel]
            for row, vec in zip(fold_rows, fold_values.to_numpy(), strict=True):
                if row.startswith("PertTX:"):
                    predicted[row.split(":", 1)[1]] = (fold, vec)
                elif row.startswith("observed:"):
                    observed[row.split(":", 1)[1]] = (fold, vec)
                elif row == "control_fit":
                    c_fit[fold] = vec
                elif row == "control_reference":
                    c_ref[fold] = vec
        # Δ per fold, so each perturbation is taken against its own fold's controls.
        order = _plot_order(df, [p for p in observed if p in predicted])
        if order:
            genes = values.columns
            pred_delta = pd.DataFrame(
                [predicted[p][1] - c_fit[predicted[p][0]] for p in order],
                index=order,
                columns=genes,
            )
            obs_delta = pd.DataFrame(
                [observed[p][1] - c_ref[observed[p][0]] for p in order], index=order, columns=genes
            )
            zero = np.zeros(len(genes))
            path = plots / "effect_scatter.png"
            plt.close(pl.effect_scatter(pred_delta, obs_delta, zero, save=path, n_top_de=n_top_de))
            written.append(path)
            path = plots / "de_heatmap.png"
            plt.close(pl.de_heatmap(pred_delta, obs_delta, zero, save=path, ncols=2))
            written.append(path)
    for fold, history in sorted(histories.items()):
        if history.empty:
            continue
        path = plots / f"loss_curves_fold{fold}.png"
        try:
            plt.close(pl.loss_curves({c: history[c].dropna() for c in history}, save=path))
        except ValueError:
            continue
        written.append(path)
    return written


def _plot_order(df: pd.DataFrame, labels: Sequence[str], limit: int = 30) -> list[str]:
    """Strong-effect perturbations first (by split-half r), then the rest; at most ``limit``."""
    if not labels:
        return []
    per_label = df.drop_duplicates("perturbation").set_index("perturbation")
    r = per_label["split_half_r"].reindex(list(labels)).fillna(-np.inf)
    ordered = r.sort_values(ascending=False, kind="stable").index.tolist()
    return ordered[:limit]


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def _resolve(value: Any, name: str, quick: bool) -> Any:
    if value is not None:
        return value
    return (QUICK if quick else DEFAULTS)[name]


def _config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_cache(folds_dir: Path, digest: str) -> None:
    """Refuse a folder whose cached folds were computed with other settings."""
    for info_path in sorted(folds_dir.glob("fold_*.json")):
        try:
            cached = json.loads(info_path.read_text()).get("hash")
        except (OSError, json.JSONDecodeError):
            cached = None
        if cached != digest:
            raise ValueError(
                f"{info_path.parent} holds fold results of other settings ({info_path.name}: "
                f"config hash {cached} != {digest}); use another --out, or --overwrite to "
                "recompute"
            )


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def benchmark(
    data: str | os.PathLike | AnnData | None = None,
    *,
    out: str | os.PathLike = "pertx_benchmark",
    perturbation_key: str | None = None,
    control_group: str | None = None,
    layer: str | None = None,
    folds: int | None = None,
    split: str = "auto",
    seed: int = 0,
    graph: Any = "auto",
    d_model: int | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    validation_size: float = 0.1,
    split_control: bool = True,
    baselines: Sequence[str] = BASELINE_NAMES,
    linear_embedding: str = "auto",
    n_top_de: int = 20,
    pertx_profile: str = "sampled",
    shuffled_graph: bool = False,
    n_boot: int = 1000,
    data_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    quick: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Benchmark PertTX against the baselines on held-out perturbations, fold by fold.

    Parameters
    ----------
    data
        ``"simulated"`` (:func:`pertx_scvi.datasets.simulate`; the default), ``"papalexi2021"``
        (:func:`pertx_scvi.datasets.papalexi2021`, read from ``$PERTX_DATA_DIR``), a path to an
        ``.h5ad`` file with raw counts, or an :class:`~anndata.AnnData`.
    out
        Output folder: ``metrics.csv``, ``summary.csv``, ``summary.md``, ``config.json``,
        ``folds/`` (per-fold cache) and ``plots/``.
    perturbation_key, control_group, layer
        For an ``.h5ad`` file or AnnData: label column (default ``"perturbation"``), control
        label (default ``"control"``) and counts layer (default ``X``).
    folds
        Number of folds (default 5; 2 with ``quick``).
    split
        ``"kfold"`` (:func:`kfold_perturbations`), ``"gears"`` (:func:`gears_splits`) or
        ``"auto"`` (``gears`` when the data has combination labels, else ``kfold``).
    seed
        Seed of the splits, the control split, training and the bootstrap.
    graph
        Gene graph (see :func:`load_graph`): names (``go``, ``omnipath``, ``trrust``,
        ``simulated``), paths, a :class:`~pertx_scvi.GeneGraph`, ``None``; ``"auto"`` (default):
        the simulator's network for simulated data, else ``go`` when the file is found. Used by
        the graph-neighbour baseline and passed to PertTX as ``gene_graph=`` when PertTX accepts
        it.
    d_model, n_layers, n_heads
        PertTX size (default 64, 2, 4; 32, 1, 2 with ``quick``).
    epochs, batch_size, lr
        Training (default 2, 64, 1e-2; 20, 64, 1e-2 with ``quick``).
    validation_size
        Share of the training cells used for the validation loss.
    split_control
        Split the control cells in halves (:func:`pertx_scvi.metrics.split_control`): training
        and the baselines use one half, the observed Δ is taken against the other.
    baselines
        Baselines to compare with (``control_mean``, ``train_mean``, ``additive``, ``linear``,
        ``graph_neighbour``; the last one needs a graph).
    linear_embedding
        Gene embedding of the linear baseline: ``"go"`` (:func:`pertx_scvi.metrics.go_gene_embedding`
        of ``graphs/human_gene2go.tsv.gz``), ``"pca"`` (its PCA default) or ``"auto"`` (``go``
        for real data when the file is found).
    n_top_de
        Top DE genes of the ``*_top`` metrics.
    pertx_profile
        How PertTX's predicted profile of a perturbation is formed from its predictions for the
        source controls: ``"sampled"`` (default; counts drawn from the model, log-normalised per
        cell and averaged, like the observed profiles; what :meth:`~pertx_scvi.PertTX.evaluate`
        does for count likelihoods) or ``"mean"`` (the mean of ``predict_perturbation(...).X``,
        the log of the predicted mean; biased upwards on sparse data). See
        :func:`pertx_scvi._evaluate.predicted_profiles`.
    shuffled_graph
        Also train, per fold, the same model given a degree-preserving shuffled copy of every
        graph (:meth:`GeneGraph.shuffled <pertx_scvi.GeneGraph.shuffled>`), reported as
        ``PertTX_shuffled_graph``: whether the graph's wiring, not merely its presence, is what
        helps. Doubles the training time.
    n_boot
        Bootstrap resamples of the intervals.
    data_dir
        Folder with ``perturb/`` and ``graphs/`` (default ``$PERTX_DATA_DIR``, then the cache
        folder; see :func:`pertx_scvi.datasets.find_data_file`).
    threads
        Torch CPU threads (default: half the CPU cores, at least 1). On a machine whose few
        cores are shared, more threads than free cores slow training down many times over.
    quick
        Small model on small simulated data (a couple of minutes on 2 CPU cores; for CI).
        Explicit arguments still win.
    overwrite
        Recompute finished folds even when their cached results match the settings (otherwise
        a folder with results of other settings is an error).
    plots
        Write the PNG plots.
    progress
        Show progress bars (rich) over folds and epochs.
    command
        Command line written at the top of ``summary.md`` (default: this call).

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    wall_start = time.perf_counter()
    import torch
    from rich.console import Console

    from ._model import PertTX
    from .graphs import GeneGraph

    console = Console(stderr=True, quiet=not progress)
    out = Path(out).expanduser()
    if data is None:
        data = "simulated"
    n_threads = int(threads) if threads else max(1, (os.cpu_count() or 2) // 2)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        settings: dict[str, Any] = {
            "folds": int(_resolve(folds, "folds", quick)),
            "d_model": int(_resolve(d_model, "d_model", quick)),
            "n_layers": int(_resolve(n_layers, "n_layers", quick)),
            "n_heads": int(_resolve(n_heads, "n_heads", quick)),
            "epochs": int(_resolve(epochs, "epochs", quick)),
            "batch_size": int(_resolve(batch_size, "batch_size", quick)),
            "lr": float(_resolve(lr, "lr", quick)),
            "validation_size": float(validation_size),
            "seed": int(seed),
            "split_control": bool(split_control),
            "baselines": [str(b) for b in baselines],
            "n_top_de": int(n_top_de),
            "pertx_profile": str(pertx_profile),
            "shuffled_graph": bool(shuffled_graph),
        }
        unknown = [b for b in settings["baselines"] if b not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if pertx_profile not in ("sampled", "mean"):
            raise ValueError(f"pertx_profile must be 'sampled' or 'mean', got {pertx_profile!r}")

        console.log(f"loading data: {data if not isinstance(data, AnnData) else 'AnnData'}")
        loaded = _load_data(data, perturbation_key, control_group, layer, quick, seed, data_dir)
        adata, key, control = loaded.adata, loaded.perturbation_key, loaded.control_group
        PertTX.setup_anndata(adata, perturbation_key=key, control_group=control, layer=loaded.layer)
        separator = DEFAULT_SEPARATOR
        tokens = (*DEFAULT_CONTROL_TOKENS, control)
        labels = adata.obs[key].astype(str).to_numpy()
        distinct = _perturbation_labels(pd.unique(labels), tokens, separator)
        has_combinations = any(len(parse_perturbation(p, separator, tokens)) > 1 for p in distinct)
        split_kind = ("gears" if has_combinations else "kfold") if split == "auto" else split
        splitter = gears_splits if split_kind == "gears" else kfold_perturbations
        fold_labels = splitter(
            distinct,
            settings["folds"],
            settings["seed"],
            control_group=control,
            separator=separator,
        )

        graph_spec = _resolve_graph_spec(graph, loaded, data_dir)
        console.log(f"loading graph: {graph_spec}")
        graph_parts, graph_names = load_graphs(graph_spec, loaded.network, data_dir)
        gene_graph = None
        if graph_parts:
            gene_graph = graph_parts[0] if len(graph_parts) == 1 else GeneGraph.union(*graph_parts)
        # PertTX gets one view per graph (multi-view encoder); the baseline the union.
        model_graph = graph_parts[0] if len(graph_parts) == 1 else (graph_parts or None)
        shuffled_model_graph = None
        if settings["shuffled_graph"]:
            if model_graph is None:
                raise ValueError(
                    "shuffled_graph needs a gene graph to shuffle: pass graph= (--graph)"
                )
            # Rewired once (seeded), shared by every fold like the real graphs.
            shuffled = [g.shuffled(seed=settings["seed"]) for g in graph_parts]
            shuffled_model_graph = shuffled[0] if len(shuffled) == 1 else shuffled
        perturbation_genes = sorted({g for p in distinct for g in parse_perturbation(p, separator)})
        embedding, embedding_name = _linear_embedding(
            linear_embedding, loaded, perturbation_genes, data_dir
        )
        id_table = None
        if loaded.is_real and gene_graph is not None:
            try:
                id_table = _find(ID_TABLE_FILE, data_dir)
            except FileNotFoundError:
                id_table = None

        fit_mask = None
        if settings["split_control"]:
            fit_mask, _ = metrics.split_control(adata, key, control, seed=settings["seed"])
        control_cells = None if fit_mask is None else np.flatnonzero(fit_mask)
        accepts_graph = _model_accepts_graph()

        config = {
            "data": loaded.name,
            "data_shape": [int(adata.n_obs), int(adata.n_vars)],
            "perturbation_key": key,
            "control_group": control,
            "layer": loaded.layer,
            "split": split_kind,
            "graph": graph_names,
            "graph_edges": None if gene_graph is None else int(gene_graph.n_edges),
            "linear_embedding": embedding_name,
            "model_gene_graph": bool(accepts_graph and gene_graph is not None),
            **settings,
        }
        digest = _config_hash(config)
        folds_dir = out / "folds"
        if not overwrite:
            _check_cache(folds_dir, digest)
        folds_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**config, "hash": digest}, indent=2) + "\n")

        results, profile_frames, histories, infos = [], [], {}, []
        n_cached = 0
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=not progress) as bars:
            fold_task = bars.add_task("folds", total=len(fold_labels))
            epoch_task = bars.add_task("epochs", total=settings["epochs"], visible=False)
            for k, held in enumerate(fold_labels):
                csv_path = folds_dir / f"fold_{k}.csv"
                info_path = folds_dir / f"fold_{k}.json"
                profiles_path = folds_dir / f"fold_{k}_profiles.csv.gz"
                history_path = folds_dir / f"fold_{k}_history.csv"
                if csv_path.exists() and info_path.exists() and not overwrite:
                    info = json.loads(info_path.read_text())
                    results.append(pd.read_csv(csv_path))
                    if profiles_path.exists():
                        profile_frames.append(pd.read_csv(profiles_path))
                    if history_path.exists():
                        histories[k] = pd.read_csv(history_path, index_col="epoch")
                    infos.append(info)
                    n_cached += 1
                    console.log(f"fold {k}: cached ({csv_path}), skipped")
                    bars.advance(fold_task)
                    continue
                bars.reset(epoch_task, total=settings["epochs"], visible=True)
                bars.update(epoch_task, description=f"fold {k} epochs")

                fold_start = time.perf_counter()

                def update_epoch(epoch: int, _task=epoch_task, _k=k, _t0=fold_start) -> None:
                    bars.update(_task, completed=epoch)
                    if not console.is_terminal:  # no live bars in a log file: one line per epoch
                        console.log(
                            f"fold {_k}: epoch {epoch}/{settings['epochs']} "
                            f"({time.perf_counter() - _t0:.0f} s)"
                        )

                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
                    result, profiles, history, info = _run_fold(
                        k,
                        held,
                        loaded,
                        settings,
                        gene_graph,
                        embedding,
                        control_cells,
                        update_epoch,
                        id_table,
                        model_graph,
                    )
                    if shuffled_model_graph is not None:
                        bars.reset(epoch_task, total=settings["epochs"])
                        bars.update(epoch_task, description=f"fold {k} epochs (shuffled graph)")
                        shuffled_result, _, _, shuffled_info = _run_fold(
                            k,
                            held,
                            loaded,
                            {**settings, "baselines": []},
                            gene_graph,
                            embedding,
                            control_cells,
                            update_epoch,
                            id_table,
                            shuffled_model_graph,
                        )
                        shuffled_result = shuffled_result[shuffled_result["method"] == "PertTX"]
                        shuffled_result = shuffled_result.assign(method="PertTX_shuffled_graph")
                        result = pd.concat([result, shuffled_result], ignore_index=True)
                        info["train_seconds_shuffled_graph"] = shuffled_info["train_seconds"]
                info["hash"] = digest
                profiles = profiles.rename_axis("row").reset_index()
                profiles.insert(0, "fold", k)
                _write_atomic(history_path, lambda p, h=history: h.to_csv(p))
                _write_atomic(
                    profiles_path,
                    lambda p, f=profiles: f.to_csv(p, index=False, compression="gzip"),
                )
                info_path.write_text(json.dumps(info, indent=2) + "\n")
                _write_atomic(csv_path, lambda p, r=result: r.to_csv(p, index=False))
                results.append(result)
                profile_frames.append(profiles)
                histories[k] = history
                infos.append(info)
                pertx = result[
                    (result["method"] == "PertTX") & (result["metric"] == "pearson_delta")
                ]
                console.log(
                    f"fold {k}: {len(held)} held out, trained {info['train_seconds']} s, "
                    f"PertTX pearson_delta {pertx['value'].mean():.3f}"
                )
                bars.advance(fold_task)
            bars.update(epoch_task, visible=False)

        df = pd.concat(results, ignore_index=True)
        df.to_csv(out / "metrics.csv", index=False)
        summary = _summaries(df, n_boot=int(n_boot), seed=settings["seed"])
        summary.to_csv(out / "summary.csv", index=False)
        metric_order = metrics.metric_names(settings["n_top_de"])
        wall = time.perf_counter() - wall_start

        notes = list(loaded.notes)
        if gene_graph is not None and not accepts_graph:
            notes.append(
                "this PertTX has no gene_graph argument: the graph was used by the graph-neighbour "
                "baseline only, and PertTX cannot predict genes it never saw perturbed"
            )
        missing = sorted({p for info in infos for p in info.get("pertx_missing", [])})
        if missing:
            notes.append(
                f"PertTX could not embed {len(missing)} held-out label(s) ({', '.join(missing[:20])}"
                f"{' ...' if len(missing) > 20 else ''}): their PertTX rows are NaN, so PertTX's "
                "means cover fewer perturbations than the baselines' (see n), and its "
                "discrimination is left out in those folds"
            )
        if split_kind == "gears":
            notes.append(
                "GEARS folds hold a combination out in every fold where one of its genes is unseen, "
                "so a combination can appear in several folds (with different training sets)"
            )
        n_labels = len(distinct)
        n_controls = int((labels == control).sum())
        header = {
            "command": command or _python_call(data, out, quick),
            "wall time": f"{wall / 60:.1f} min ({wall:.0f} s; {len(infos) - n_cached} fold(s) "
            f"trained, {n_cached} from the cache in {out / 'folds'})",
            "data": f"{loaded.name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {n_labels} "
            f"perturbation labels, {n_controls:,} control cells (`{control}`)",
            "splits": f"{split_kind}, {settings['folds']} folds over perturbations, seed "
            f"{settings['seed']}",
            "controls": (
                f"split-control: half of the controls ({int(fit_mask.sum()):,}) for training and the "
                "baselines, the other half as the reference of the observed Δ"
                if fit_mask is not None
                else "all controls for training, baselines and the observed Δ (no split-control)"
            ),
            "graph": (
                "none"
                if gene_graph is None
                else f"{', '.join(map(str, graph_names))} ({gene_graph.n_genes:,} genes, "
                f"{gene_graph.n_edges:,} edges); PertTX gene_graph: "
                f"{f'yes ({len(graph_parts)} view(s))' if accepts_graph else 'no (not supported)'}"
            ),
            "model": f"PertTX d_model={settings['d_model']}, n_layers={settings['n_layers']}, "
            f"n_heads={settings['n_heads']}",
            "training": f"{settings['epochs']} epochs, batch size {settings['batch_size']}, "
            f"lr {settings['lr']:g}, validation share {settings['validation_size']:g}, "
            f"{n_threads} torch thread(s)",
            "baselines": ", ".join(b for b in settings["baselines"])
            + f" (linear baseline embedding: {embedding_name})",
            "metrics": f"log1p(normalize_total 1e4) space, top {settings['n_top_de']} DE genes",
            "notes": notes,
        }
        _write_summary_md(out / "summary.md", summary, df, header, infos, metric_order)
        if plots:
            profiles_all = pd.concat(profile_frames, ignore_index=True) if profile_frames else None
            _plot_all(
                out,
                summary,
                profiles_all if profiles_all is not None else pd.DataFrame(),
                histories,
                settings["n_top_de"],
                df,
            )
        console.log(f"done in {wall:.0f} s: {out / 'summary.md'}")
        return out
    finally:
        torch.set_num_threads(previous_threads)


def _python_call(data: Any, out: Path, quick: bool) -> str:
    shown = "AnnData" if isinstance(data, AnnData) else repr(os.fspath(data))
    return f"pertx_scvi._benchmark.benchmark({shown}, out={os.fspath(out)!r}, quick={quick})"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pertx benchmark`` options to ``parser`` (see :func:`benchmark`)."""
    d, q = DEFAULTS, QUICK
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="'simulated' (default), 'papalexi2021' (read from $PERTX_DATA_DIR) or a .h5ad file "
        "with raw counts",
    )
    data.add_argument("--perturbation-key", default=None, help="obs column (default perturbation)")
    data.add_argument("--control-group", default=None, help="control label (default control)")
    data.add_argument("--layer", default=None, help="layer with counts (default X)")
    splits = parser.add_argument_group("splits")
    splits.add_argument(
        "--folds", type=int, default=None, help=f"folds (default {d['folds']}; {q['folds']} quick)"
    )
    splits.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="kfold over labels, gears (unseen genes / combinations), auto: gears when the data "
        "has combinations",
    )
    splits.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    splits.add_argument(
        "--split-control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on half of the controls, take the observed effects against the other half",
    )
    graphs = parser.add_argument_group("graphs")
    graphs.add_argument(
        "--graph",
        default="auto",
        help="comma-separated names (go, omnipath, trrust from $PERTX_DATA_DIR/graphs; simulated) "
        "or paths; 'none' for no graph; auto (default): simulated network or go",
    )
    graphs.add_argument(
        "--linear-embedding",
        choices=("auto", "go", "pca"),
        default="auto",
        help="gene embedding of the linear baseline (auto: GO for real data)",
    )
    model = parser.add_argument_group("model and training")
    for flag, kind, name in (
        ("--d-model", int, "d_model"),
        ("--n-layers", int, "n_layers"),
        ("--n-heads", int, "n_heads"),
        ("--epochs", int, "epochs"),
        ("--batch-size", int, "batch_size"),
        ("--lr", float, "lr"),
    ):
        model.add_argument(
            flag, type=kind, default=None, help=f"default {d[name]} ({q[name]} with --quick)"
        )
    model.add_argument(
        "--validation-size", type=float, default=0.1, help="validation share (default 0.1)"
    )
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument(
        "--baselines",
        default=",".join(BASELINE_NAMES),
        help="comma-separated baselines (default: all)",
    )
    evaluation.add_argument("--n-top-de", type=int, default=20, help="top DE genes (default 20)")
    evaluation.add_argument(
        "--pertx-profile",
        choices=("sampled", "mean"),
        default="sampled",
        help="PertTX profile: mean of log-normalised sampled counts, like the observed profiles "
        "(default, as model.evaluate does), or log of the predicted mean",
    )
    evaluation.add_argument(
        "--shuffled-graph",
        action="store_true",
        help="also train PertTX on degree-preserving shuffled graphs (PertTX_shuffled_graph): "
        "does the graph's wiring help? Doubles the training time",
    )
    evaluation.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)"
    )
    evaluation.add_argument(
        "--out", default="pertx_benchmark", help="output folder (default pertx_benchmark)"
    )
    evaluation.add_argument(
        "--overwrite", action="store_true", help="recompute folds cached in --out/folds"
    )
    evaluation.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    evaluation.add_argument(
        "--data-dir",
        default=None,
        help="folder with perturb/ and graphs/ (default $PERTX_DATA_DIR)",
    )
    evaluation.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: half the cores, at least 1)",
    )
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small model on small simulated data, 2 folds (about a minute; for CI)",
    )


def _command_line(args: argparse.Namespace) -> str:
    """The command line: ``sys.argv`` when it ran ``pertx benchmark``, else rebuilt from ``args``."""
    argv = sys.argv[1:]
    if "benchmark" in argv:
        return shlex.join(["pertx", *argv])
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    words = ["pertx", "benchmark"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:
            words.append(flag)
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def run_benchmark(args: argparse.Namespace) -> Path:
    """Run :func:`benchmark` with the options parsed by :func:`add_benchmark_arguments`.

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    command = _command_line(args)
    return benchmark(
        args.data,
        out=args.out,
        perturbation_key=args.perturbation_key,
        control_group=args.control_group,
        layer=args.layer,
        folds=args.folds,
        split=args.split,
        seed=args.seed,
        graph=args.graph,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        validation_size=args.validation_size,
        split_control=args.split_control,
        baselines=_split_names(args.baselines),
        linear_embedding=args.linear_embedding,
        n_top_de=args.n_top_de,
        pertx_profile=args.pertx_profile,
        shuffled_graph=args.shuffled_graph,
        n_boot=args.n_boot,
        data_dir=args.data_dir,
        threads=args.threads,
        quick=args.quick,
        overwrite=args.overwrite,
        plots=not args.no_plots,
        progress=not args.no_progress,
        command=command,
    )
