"""Data sets and gene graphs by name: files looked up under ``$PERTX_DATA_DIR``.

The one place in the package that maps the names ``simulated``, ``papalexi2021``, ``go``,
``omnipath``, ``trrust`` and ``string`` to loaders and to files of the data folder
(:func:`pertx_scvi.datasets.find_data_file`); ``pertx benchmark`` and ``pertx demo`` use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from .. import metrics

__all__ = [
    "GENE2GO_FILE",
    "GRAPH_FILES",
    "ID_TABLE_FILE",
    "QUICK_SIMULATION",
    "load_graph",
    "load_graphs",
]

GRAPH_FILES = {
    "go": "graphs/go_top20_jaccard.csv.gz",
    "omnipath": "graphs/omnipath_interactions.csv.gz",
    "trrust": "graphs/trrust_v2_human.tsv",
    "string": "graphs/string_v12_human_ntm700.tsv.gz",
}
ID_TABLE_FILE = "graphs/human_gene_ids.tsv.gz"
GENE2GO_FILE = "graphs/human_gene2go.tsv.gz"
SIMULATED_GRAPH = "simulated"

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
    from .. import datasets

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
    if name in datasets.PERTURBENCH_SCREENS:
        return _Data(
            datasets.perturbench(name, data_dir),
            f"{name} (PerturBench development file, log-normalised values only)",
            "perturbation",
            "control",
            None,
        )
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {name!r} is neither 'simulated', 'papalexi2021', "
            f"{' / '.join(map(repr, datasets.PERTURBENCH_SCREENS))} nor an existing .h5ad file"
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
    from ..graphs import GeneGraph

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
        ``graphs/human_gene_ids.tsv.gz``), ``trrust`` (``graphs/trrust_v2_human.tsv``), ``string``
        (STRING v12 combined scores, ``graphs/string_v12_human_ntm700.tsv.gz``), all
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
    from ..graphs import GeneGraph

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
                if key == "string":  # one relation: the combined score (>= 0.4 in the file)
                    graphs.append(
                        GeneGraph.from_string(path, channels="combined_score", id_table=id_table)
                    )
                else:
                    loader = {"omnipath": GeneGraph.from_omnipath, "trrust": GeneGraph.from_trrust}
                    graphs.append(loader[key](path, id_table=id_table))
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
    from .. import datasets

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
        from ..graphs._id_mapping import load_id_table, resolve_names

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
