"""From gene graphs and gene embedding tables to the perturbation vocabulary and encoder.

AnnData-free: :func:`build_graph_setup` takes the genes named in the perturbation labels and
the measured genes (names as in the data), the graph(s) and the embedding table, resolves gene
names between them (``MARCH8`` in the data is ``MARCHF8`` in the graphs: with an id table the
graph's and the table's nodes are renamed to the data's names), and returns

- the vocabulary of perturbation genes: label genes, graph genes and table genes;
- one :class:`~pertx_scvi.module._graph_encoder.GraphTensors` per view, over the vocabulary;
- the table's vectors in vocabulary order, with a mask of the genes found in it.

:func:`make_perturbation_encoder` turns that into an encoder module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .graphs import GeneGraph, load_id_table, read_gene_embedding
from .graphs._gene_graph import REVERSE_SUFFIX
from .graphs._id_mapping import resolve_names
from .module._graph_encoder import (
    GraphTensors,
    MultiViewPerturbationEncoder,
    RGCNPerturbationEncoder,
)

logger = logging.getLogger(__name__)

ENCODERS = ("auto", "label", "rgcn", "multiview")

GraphInput = GeneGraph | str | os.PathLike | Sequence[GeneGraph | str | os.PathLike] | None


@dataclass
class GraphSetup:
    """Vocabulary, graph tensors and node features of a graph perturbation encoder.

    Attributes
    ----------
    kind
        ``"rgcn"`` or ``"multiview"``.
    vocabulary
        Perturbation genes (data names), sorted.
    graphs
        One :class:`GraphTensors` per view, node ids = vocabulary positions.
    gene_table
        (len(vocabulary), d) pretrained vectors (zeros where not found), or None.
    table_found
        (len(vocabulary),) bool, or None.
    renamed
        Data name -> name in a graph or the table, for genes whose names differ.
    label_genes_without_prior
        Label genes with neither a graph edge nor a table vector (embedded only when trained).
    label_genes
        Genes named by the perturbation labels (the only ones that can be trained).
    """

    kind: str
    vocabulary: pd.Index
    graphs: list[GraphTensors]
    gene_table: np.ndarray | None = None
    table_found: np.ndarray | None = None
    renamed: dict[str, str] = field(default_factory=dict)
    label_genes_without_prior: list[str] = field(default_factory=list)
    label_genes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: vocabulary, views, relations, edges, table coverage, renamings."""
        parts = [f"{len(self.vocabulary):,} perturbation genes"]
        for g in self.graphs:
            parts.append(
                f"view {g.name!r}: {g.edge_index.shape[1]:,} edges, "
                f"{len(g.relation_names)} relations"
            )
        if self.table_found is not None:
            parts.append(f"table vectors for {int(self.table_found.sum()):,} genes")
        if self.renamed:
            shown = ", ".join(f"{k}->{v}" for k, v in list(self.renamed.items())[:5])
            parts.append(f"{len(self.renamed)} renamed ({shown})")
        if self.label_genes_without_prior:
            parts.append(f"no prior for {self.label_genes_without_prior[:10]}")
        return "; ".join(parts)


# ---- inputs --------------------------------------------------------------------------------------
def resolve_encoder_kind(kind: str, gene_graph: GraphInput, gene_embedding) -> str:
    """``auto``: ``rgcn`` with one graph (or a table only), ``multiview`` with a list of graphs,
    ``label`` with neither."""
    if kind not in ENCODERS:
        raise ValueError(f"perturbation_encoder must be one of {ENCODERS}, got {kind!r}")
    has_graph = gene_graph is not None and not (
        isinstance(gene_graph, list | tuple) and len(gene_graph) == 0
    )
    if kind == "auto":
        if isinstance(gene_graph, list | tuple) and len(gene_graph) > 1:
            return "multiview"
        return "rgcn" if has_graph or gene_embedding is not None else "label"
    if kind in ("rgcn", "multiview") and not has_graph and gene_embedding is None:
        raise ValueError(
            f"perturbation_encoder={kind!r} needs gene_graph= (a GeneGraph, a graph file or a "
            "list of them) or gene_embedding= (a gene x dims table)"
        )
    return kind


def load_graphs(gene_graph: GraphInput, id_table=None) -> list[GeneGraph]:
    """The graph input as a list of :class:`GeneGraph` (files read with ``GeneGraph.read``)."""
    if gene_graph is None:
        return []
    items = list(gene_graph) if isinstance(gene_graph, list | tuple) else [gene_graph]
    graphs = []
    for item in items:
        if isinstance(item, GeneGraph):
            graphs.append(item)
        elif isinstance(item, str | os.PathLike | pd.DataFrame):
            kwargs = {"id_table": id_table} if id_table is not None else {}
            graphs.append(GeneGraph.read(item, **kwargs))
        else:
            raise TypeError(
                "gene_graph must be a GeneGraph, a graph file path or a list of them, not "
                f"{type(item).__name__}"
            )
    return graphs


def load_gene_table(gene_embedding) -> pd.DataFrame | None:
    """The embedding input as a genes x dims float32 DataFrame (files read with
    :func:`~pertx_scvi.graphs.read_gene_embedding`)."""
    if gene_embedding is None:
        return None
    if isinstance(gene_embedding, str | os.PathLike):
        return read_gene_embedding(gene_embedding)
    if isinstance(gene_embedding, dict):
        gene_embedding = pd.DataFrame.from_dict(
            {str(k): np.asarray(v, dtype=np.float32).ravel() for k, v in gene_embedding.items()},
            orient="index",
        )
    if not isinstance(gene_embedding, pd.DataFrame):
        raise TypeError(
            "gene_embedding must be a DataFrame (genes x dims), a {gene: vector} dict or a file "
            f"path, not {type(gene_embedding).__name__}"
        )
    table = gene_embedding.astype(np.float32)
    table.index = pd.Index(table.index.astype(str), name="gene")
    if table.index.has_duplicates:
        repeated = table.index[table.index.duplicated()][:5].tolist()
        raise ValueError(f"gene_embedding has repeated genes {repeated}")
    return table


# ---- names ---------------------------------------------------------------------------------------
def _renames(data_genes: Sequence[str], nodes: pd.Index, id_table) -> dict[str, str]:
    """Node name -> data name for data genes known under another name in ``nodes``."""
    if id_table is None:
        return {}
    data_set = set(data_genes)
    absent = [g for g in data_genes if g not in nodes]
    if not absent:
        return {}
    resolved = resolve_names(absent, nodes, id_table)
    pairs = [(node, gene) for gene, node in resolved.items() if node and node != gene]
    counts = pd.Series([node for node, _ in pairs]).value_counts()
    return {node: gene for node, gene in pairs if node not in data_set and counts.get(node, 0) == 1}


def _source_names(vocabulary: pd.Index, renames: dict[str, str]) -> list[str]:
    """Vocabulary genes under a source's names (unique: clashes get a name matching nothing)."""
    back = {gene: node for node, gene in renames.items()}
    names = [back.get(g, g) for g in vocabulary]
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in seen else f"\x00{i}")
        seen.add(name)
    return out


# ---- edges ---------------------------------------------------------------------------------------
def graph_tensors(
    graph: GeneGraph,
    node_names: Sequence[str],
    name: str,
    reverse_relations: bool = True,
    max_neighbours: int | None = 32,
) -> GraphTensors:
    """Edges of ``graph`` over ``node_names`` (positions = node ids) as :class:`GraphTensors`.

    Symmetric relations (GO, STRING) are read in both directions; for directed relations the
    reverse edges form a relation of their own (``"<relation>~rev"``) when
    ``reverse_relations``. Self-loops are dropped, and each node keeps its ``max_neighbours``
    heaviest in-edges per relation (see :meth:`GeneGraph.to_pyg`).
    """
    data = graph.to_pyg(
        genes=node_names,
        undirected=False,
        reverse_relations=reverse_relations,
        self_loops=False,
        max_neighbours=max_neighbours,
    )
    return GraphTensors(
        edge_index=data.edge_index,
        edge_type=data.edge_type,
        edge_weight=data.edge_weight,
        relation_names=list(data.relation_names),
        name=name,
    )


def _split_by_relation(tensors: GraphTensors) -> list[GraphTensors]:
    """One view per relation (a reverse relation goes with its forward one)."""
    groups: dict[str, list[int]] = {}
    for code, rel in enumerate(tensors.relation_names):
        groups.setdefault(rel.removesuffix(REVERSE_SUFFIX), []).append(code)
    views = []
    for base, codes in groups.items():
        m = torch.isin(tensors.edge_type, torch.tensor(codes))
        remap = torch.full((len(tensors.relation_names),), -1, dtype=torch.long)
        remap[torch.tensor(codes)] = torch.arange(len(codes))
        views.append(
            GraphTensors(
                edge_index=tensors.edge_index[:, m],
                edge_type=remap[tensors.edge_type[m]],
                edge_weight=tensors.edge_weight[m],
                relation_names=[tensors.relation_names[c] for c in codes],
                name=base,
            )
        )
    return views


def _view_name(graph: GeneGraph, i: int) -> str:
    rels = graph.relations
    prefixes = {r.split("_")[0] for r in rels}
    return prefixes.pop() if len(prefixes) == 1 else f"graph{i}"


# ---- main entry ----------------------------------------------------------------------------------
def build_graph_setup(
    label_genes: Iterable[str],
    data_genes: Iterable[str],
    gene_graph: GraphInput,
    gene_embedding=None,
    kind: str = "rgcn",
    id_table=None,
    max_neighbours: int | None = 32,
    reverse_relations: bool = True,
) -> GraphSetup:
    """Vocabulary, per-view edge tensors and table vectors for a graph perturbation encoder.

    Parameters
    ----------
    label_genes
        Genes named in the perturbation labels (data names).
    data_genes
        Other genes known under the data's names (the measured genes): graph or table nodes
        that are these genes under another name are renamed to them.
    gene_graph
        A :class:`~pertx_scvi.GeneGraph`, a graph file, or a list of them (one view each with
        ``kind="multiview"``; united with ``kind="rgcn"``).
    gene_embedding
        Genes x dims table (DataFrame, ``{gene: vector}`` dict or a file for
        :func:`~pertx_scvi.graphs.read_gene_embedding`), or None.
    kind
        ``"rgcn"`` or ``"multiview"`` (a single graph is split into one view per relation).
    id_table
        Id table (``human_gene_ids.tsv.gz`` or a DataFrame ``id, id_type, symbol``) to match
        gene names between the data, the graphs and the table; None: exact names only.
    max_neighbours
        In-edges kept per node and relation (heaviest first); None: all.
    reverse_relations
        Give the reverse of directed relations a relation of their own.

    Returns
    -------
    GraphSetup
    """
    if kind not in ("rgcn", "multiview"):
        raise ValueError(f"kind must be 'rgcn' or 'multiview', got {kind!r}")
    labels = sorted({str(g) for g in label_genes})
    data_names = list(dict.fromkeys([*labels, *(str(g) for g in data_genes)]))
    table_df = None if id_table is None else load_id_table(id_table)
    graphs = load_graphs(gene_graph, id_table)
    if kind == "rgcn" and len(graphs) > 1:
        graphs = [GeneGraph.union(*graphs)]
    table = load_gene_table(gene_embedding)

    graph_renames = [_renames(data_names, g.genes, table_df) for g in graphs]
    table_renames = _renames(data_names, table.index, table_df) if table is not None else {}
    genes: set[str] = set(labels)
    for g, ren in zip(graphs, graph_renames, strict=True):
        genes.update(ren.get(n, n) for n in g.genes)
    if table is not None:
        genes.update(table_renames.get(n, n) for n in table.index)
    vocabulary = pd.Index(sorted(genes), name="gene")

    views: list[GraphTensors] = []
    for i, (g, ren) in enumerate(zip(graphs, graph_renames, strict=True)):
        tensors = graph_tensors(
            g, _source_names(vocabulary, ren), _view_name(g, i), reverse_relations, max_neighbours
        )
        if kind == "multiview" and len(graphs) == 1:
            views.extend(_split_by_relation(tensors))
        else:
            views.append(tensors)

    gene_table = found = None
    if table is not None:
        rows = table.reindex(_source_names(vocabulary, table_renames))
        values = rows.to_numpy(dtype=np.float32)
        found = np.isfinite(values).all(1) & (np.abs(np.nan_to_num(values)).sum(1) > 0)
        gene_table = np.where(found[:, None], np.nan_to_num(values), 0.0).astype(np.float32)

    renamed = {gene: node for ren in [*graph_renames, table_renames] for node, gene in ren.items()}
    informed = np.zeros(len(vocabulary), dtype=bool)
    for v in views:
        informed[v.edge_index.reshape(-1).numpy()] = True
    if found is not None:
        informed |= found
    pos = vocabulary.get_indexer(labels)
    without = [g for g, p in zip(labels, pos, strict=True) if not informed[p]]
    setup = GraphSetup(
        kind=kind,
        vocabulary=vocabulary,
        graphs=views,
        gene_table=gene_table,
        table_found=found,
        renamed=dict(sorted(renamed.items())),
        label_genes_without_prior=without,
        label_genes=labels,
    )
    logger.info("graph prior: %s", setup.summary())
    return setup


def make_perturbation_encoder(
    setup: GraphSetup,
    d_model: int,
    n_hops: int = 2,
    graph_weight: float = 0.0,
    dropout: float = 0.0,
    **kwargs,
):
    """The encoder module for ``setup`` (:class:`RGCNPerturbationEncoder` or
    :class:`MultiViewPerturbationEncoder`); ``kwargs`` go to its constructor."""
    cls = RGCNPerturbationEncoder if setup.kind == "rgcn" else MultiViewPerturbationEncoder
    table = None if setup.gene_table is None else torch.from_numpy(setup.gene_table)
    found = None if setup.table_found is None else torch.from_numpy(setup.table_found)
    kwargs.setdefault(
        "trainable_genes", torch.from_numpy(setup.vocabulary.get_indexer(setup.label_genes))
    )
    return cls(
        len(setup.vocabulary),
        d_model,
        setup.graphs,
        gene_table=table,
        table_found=found,
        n_hops=n_hops,
        graph_weight=graph_weight,
        dropout=dropout,
        **kwargs,
    )
