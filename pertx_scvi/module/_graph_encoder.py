"""Graph perturbation encoders: genes embedded by message passing over prior gene graphs.

A perturbation gene's embedding is computed by a relational graph network over the K-hop
neighbourhood of that gene in one or several gene graphs (GO co-annotation, OmniPath, TRRUST,
STRING...), starting from per-gene input vectors that are either pretrained (a gene embedding
table, frozen) or learned. Genes never perturbed in training are embedded through their
neighbours, so unseen genes are predicted rather than refused.

- :class:`~pertx_scvi.module.RelationalConv`: one propagation step over a multi-relational
  graph (a :class:`torch_geometric.nn.MessagePassing` layer): per-relation transforms with
  basis decomposition, the source edge weights (a weighted mean per relation) times a learned
  per-relation weight, and attention over relations per node.
- :class:`RelationalGNN`: K such steps with residual connections.
- :class:`RGCNPerturbationEncoder`: one (multi-relational) graph.
- :class:`MultiViewPerturbationEncoder`: one propagation per graph, fused per node by learned
  view attention.

Each step only runs on the genes it needs: the K-hop computation subgraph of the requested genes
(:func:`torch_geometric.utils.k_hop_subgraph`, edges into the nodes within K-1 hops), cached;
during training the subgraph of all trained genes is built once and reused every step. Nodes
are ordered by hop, and layer k only updates the nodes within K-k hops (as PyG's
``trim_to_layer`` does for neighbour-sampled batches), so the outer hop costs one gather. The
sparse adjacency of each step is built with the subgraph, so that a step is one sparse x dense
product.

The link-prediction regulariser reads the first step's outputs:
:meth:`GraphPerturbationEncoder.embed_genes_for_loss` returns them with the embeddings
(:class:`LinkInputs`), for :meth:`GraphPerturbationEncoder.regularization_loss`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import k_hop_subgraph

from ._pert_encoder import PerturbationEncoder
from ._relational_conv import RelationalConv, relational_adjacency, slot_weights, slots_with_edges

_CACHE_SIZE = 32


@dataclass
class GraphTensors:
    """Edges of one graph view over the encoder's gene vocabulary.

    Attributes
    ----------
    edge_index
        (2, E) long: row 0 source, row 1 target (messages flow source -> target).
    edge_type
        (E,) long: relation of each edge, in ``[0, len(relation_names))``.
    edge_weight
        (E,) float > 0: the source's edge weights (Jaccard, score, references...).
    relation_names
        Name of each relation.
    name
        Name of the view (e.g. ``"go"``, ``"omnipath"``).
    """

    edge_index: torch.Tensor
    edge_type: torch.Tensor
    edge_weight: torch.Tensor
    relation_names: list[str]
    name: str = "graph"

    @property
    def n_relations(self) -> int:
        return len(self.relation_names)


@dataclass
class _Layer:
    """Edges of one propagation step: into the first ``n_dst`` nodes from the first ``n_src``."""

    n_src: int
    n_dst: int
    adj_t: torch.Tensor  # sparse CSR (n_dst * R, n_src): normalised weights, row t*R + r
    adj: torch.Tensor  # its transpose, CSR (for the backward pass)


@dataclass
class _Subgraph:
    """The K-hop computation subgraph of some seed genes in one view, nodes ordered by hop."""

    subset: torch.Tensor  # (n,) vocabulary positions: seeds first, then hop 1, hop 2...
    layers: list[_Layer]  # one per propagation step, outermost first
    edge_index: torch.Tensor  # (2, e) edges among the nodes within K-1 hops (link prediction)
    edge_type: torch.Tensor  # (e,)
    has_edge: torch.Tensor  # (n_seeds,) bool: the seed has an in-edge


class LinkInputs(NamedTuple):
    """What the link-prediction regulariser needs of one view's propagation in a step."""

    view: int
    nodes: torch.Tensor  # (n, d) first-step outputs of the nodes within K-1 hops
    subgraph: _Subgraph


class RelationalGNN(nn.Module):
    """K propagation steps ``h <- LayerNorm(h + dropout(GELU(conv(h))))``; step k updates only
    the nodes within K-k hops of the seeds, so the output rows are the seeds."""

    def __init__(self, d_model: int, n_relations: int, n_layers: int, n_bases: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(
            RelationalConv(d_model, d_model, n_relations, n_bases) for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, sub: _Subgraph, return_first: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Seed embeddings; with ``return_first`` also the output of the first step (the nodes
        within K-1 hops)."""
        first = None
        for conv, norm, layer in zip(self.convs, self.norms, sub.layers, strict=True):
            x = norm(x[: layer.n_dst] + self.dropout(F.gelu(conv(x, layer.adj_t, adj=layer.adj))))
            first = x if first is None else first
        return (x, first) if return_first else x


class ViewAttention(nn.Module):
    """Per-node attention over views: ``beta_v = softmax_view(q . tanh(W h_v^view))``.

    Views in which the node has no edge are left out (all views when it has none).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.project = nn.Linear(d_model, d_model)
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))

    def forward(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Fuse ``views`` (n, V, d) given ``present`` (n, V) bool; returns (n, d)."""
        score = torch.tanh(self.project(views)) @ self.query
        present = present | ~present.any(1, keepdim=True)
        beta = torch.softmax(score.masked_fill(~present, float("-inf")), dim=1)
        return (beta.unsqueeze(-1) * views).sum(1)


class GraphPerturbationEncoder(PerturbationEncoder):
    """Base of the graph encoders: node inputs, computation subgraphs, link prediction.

    Node inputs: the projected pretrained vector of genes found in the table (frozen until
    :meth:`unfreeze`) plus, for genes perturbed in training, a learned identity vector (width
    ``free_dim``, projected); genes with neither share a learned "unknown" vector. A gene never
    perturbed is thus embedded from its table vector and its neighbourhood: the trained genes
    around it carry their learned vectors through the graph. Views (graphs) are propagated by
    :class:`RelationalGNN` stacks; subclasses say how views are fused (:meth:`fuse`).

    Parameters
    ----------
    n_genes
        Vocabulary size (nodes).
    d_model
        Width of the embeddings.
    graphs
        One :class:`GraphTensors` per view (may be empty: table / learned vectors only).
    gene_table
        (n_genes, d_table) pretrained gene vectors; rows of genes not in the table are ignored.
    table_found
        (n_genes,) bool: rows of ``gene_table`` that hold a real vector.
    n_hops
        Propagation steps (message passing layers) K.
    n_bases
        Bases of the relation transforms.
    trainable_genes
        Positions (or a boolean mask) of the genes that can be perturbed in training (the genes
        named by training labels): only they get a learned vector. Default: all genes.
    free_dim
        Width of the learned identity vectors.
    dropout
        Dropout in the propagation.
    self_dropout
        During training, probability of taking a perturbed gene as never perturbed (its learned
        vector hidden for the step), so that the encoder learns to embed genes from their
        neighbours, as it must for unseen genes.
    graph_weight
        Weight of the link-prediction regulariser (0: off).
    n_link_samples
        Positive edges sampled per step for link prediction (as many negatives).
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int,
        graphs: Sequence[GraphTensors] = (),
        gene_table: torch.Tensor | None = None,
        table_found: torch.Tensor | None = None,
        n_hops: int = 2,
        n_bases: int = 4,
        trainable_genes: torch.Tensor | None = None,
        free_dim: int = 16,
        dropout: float = 0.0,
        self_dropout: float = 0.0,
        graph_weight: float = 0.0,
        n_link_samples: int = 512,
    ):
        super().__init__(n_genes, d_model)
        if n_hops < 1:
            raise ValueError(f"n_hops must be >= 1, got {n_hops}")
        if not 0.0 <= self_dropout < 1.0:
            raise ValueError(f"self_dropout must be in [0, 1), got {self_dropout}")
        if graph_weight < 0:
            raise ValueError(f"graph_weight must be >= 0, got {graph_weight}")
        self.n_hops = n_hops
        self.self_dropout = self_dropout
        self.graph_weight = graph_weight
        self.n_link_samples = n_link_samples
        self.view_names = [g.name for g in graphs]
        self.relation_names = [list(g.relation_names) for g in graphs]

        # ---- node inputs: pretrained (frozen) where found, learned elsewhere
        if gene_table is not None:
            gene_table = torch.as_tensor(gene_table, dtype=torch.float32)
            if gene_table.shape[0] != n_genes:
                raise ValueError(f"gene_table has {gene_table.shape[0]} rows, expected {n_genes}")
            found = (
                torch.as_tensor(table_found, dtype=torch.bool)
                if table_found is not None
                else gene_table.abs().sum(1) > 0
            )
            self.table = nn.Parameter(gene_table.clone(), requires_grad=False)
            self.table_input = nn.Linear(gene_table.shape[1], d_model)
        else:
            found = torch.zeros(n_genes, dtype=torch.bool)
            self.table = None
            self.table_input = None
        self.register_buffer("table_found", found)
        if trainable_genes is None:
            trainable = torch.ones(n_genes, dtype=torch.bool)
        else:
            trainable = torch.as_tensor(trainable_genes)
            if trainable.dtype != torch.bool:
                trainable = torch.zeros(n_genes, dtype=torch.bool).index_fill_(0, trainable, True)
        free_index = torch.full((n_genes,), -1, dtype=torch.long)
        free_index[trainable] = torch.arange(int(trainable.sum()))
        self.register_buffer("free_index", free_index)
        self.free = nn.Parameter(torch.randn(int(trainable.sum()), free_dim))
        self.free_input = nn.Linear(free_dim, d_model)
        self.unknown = nn.Parameter(torch.zeros(d_model))
        self.input_norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, d_model)

        # ---- graph views (edge tensors are rebuilt from the init arguments: not saved)
        in_graph = torch.zeros(n_genes, dtype=torch.bool)
        self.gnns = nn.ModuleList()
        self.relation_vectors = nn.ParameterList()
        for v, g in enumerate(graphs):
            ei = torch.as_tensor(g.edge_index, dtype=torch.long)
            et = torch.as_tensor(g.edge_type, dtype=torch.long)
            ew = torch.as_tensor(g.edge_weight, dtype=torch.float32)
            if ei.dim() != 2 or ei.shape[0] != 2 or et.shape[0] != ei.shape[1]:
                raise ValueError(f"graph view {g.name!r}: edge_index must be (2, E) with E types")
            if ei.numel() and (ei.min() < 0 or ei.max() >= n_genes):
                raise ValueError(f"graph view {g.name!r}: node ids outside [0, {n_genes})")
            n_rel = max(g.n_relations, 1)
            norm = slot_weights(ei[1] * n_rel + et, ew, n_genes * n_rel)
            self.register_buffer(f"_edge_index_{v}", ei, persistent=False)
            self.register_buffer(f"_edge_type_{v}", et, persistent=False)
            self.register_buffer(f"_edge_norm_{v}", norm, persistent=False)
            in_graph[ei.reshape(-1)] = True
            self.gnns.append(RelationalGNN(d_model, n_rel, n_hops, n_bases, dropout))
            self.relation_vectors.append(nn.Parameter(torch.ones(n_rel, d_model)))
        self.register_buffer("in_graph", in_graph)
        self._cache: OrderedDict = OrderedDict()

    # ---- public API ---------------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        return len(self.gnns)

    @property
    def has_prior(self) -> bool:
        """Whether any gene has graph or table information (beyond being trained)."""
        return bool(self.in_graph.any() or self.table_found.any())

    def informed_genes(self) -> torch.Tensor:
        """Boolean mask of genes with a graph edge or a pretrained vector."""
        return self.in_graph | self.table_found

    def can_embed(self) -> torch.Tensor:
        return self.trained_genes | self.informed_genes()

    def unfreeze(self) -> None:
        """Fine-tune the pretrained table rows too (call before :meth:`PertTX.train`)."""
        if self.table is not None:
            self.table.requires_grad_(True)

    def freeze(self) -> None:
        """Keep the pretrained table rows fixed (the default)."""
        if self.table is not None:
            self.table.requires_grad_(False)

    def regularization_loss(self, inputs: list[LinkInputs] | None) -> torch.Tensor | None:
        """``graph_weight`` x link-prediction loss on a step's node embeddings.

        ``inputs``: what :meth:`embed_genes_for_loss` returned with the step's embeddings (None
        outside training). Node embeddings: the output of the first propagation step, for the
        nodes within K-1 hops of the step's genes. Positive pairs: edges among these nodes
        (sampled); negatives: the same sources with random targets among them. Scores are
        DistMult ``sum(h_u * r * h_v) / sqrt(d)`` with a learned vector per relation; binary
        cross-entropy.
        """
        if self.graph_weight <= 0:
            return None
        device = self.unknown.device
        losses = []
        for v, x, sub in inputs or []:
            n_edges = sub.edge_index.shape[1]
            if n_edges == 0:
                continue
            pick = torch.randint(n_edges, (min(self.n_link_samples, n_edges),), device=device)
            src, dst = sub.edge_index[0, pick], sub.edge_index[1, pick]
            rel = self.relation_vectors[v][sub.edge_type[pick]]
            fake = torch.randint(x.shape[0], dst.shape, device=device)
            pos = (x[src] * rel * x[dst]).sum(-1) / math.sqrt(self.d_model)
            neg = (x[src] * rel * x[fake]).sum(-1) / math.sqrt(self.d_model)
            logits = torch.cat([pos, neg])
            labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
            losses.append(F.binary_cross_entropy_with_logits(logits, labels))
        if not losses:
            return torch.zeros((), device=device)
        return self.graph_weight * torch.stack(losses).mean()

    # ---- embedding ----------------------------------------------------------------------------
    def embed_genes(self, genes: torch.Tensor) -> torch.Tensor:
        return self.embed_genes_for_loss(genes)[0]

    def embed_genes_for_loss(
        self, genes: torch.Tensor, left_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[LinkInputs] | None]:
        """Embeddings of ``genes`` and, in training with ``graph_weight``, the inputs of
        :meth:`regularization_loss` (one per view). ``left_out`` (a boolean mask over the
        vocabulary, training only) says which seeds are embedded as never perturbed, in place
        of this encoder's own ``self_dropout`` draw."""
        links = [] if self.training and self.graph_weight > 0 else None
        seeds, rows = self._seeds_for(genes.long())
        hidden = None
        if self.training and left_out is not None:
            hidden = left_out[seeds]
        hidden = self._encode(seeds, links, hidden)
        return self.output(hidden[rows]), links

    def _seeds_for(self, genes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seed set to encode and the rows of ``genes`` in it.

        Genes that were all perturbed in training are encoded together with every other trained
        gene, so that the subgraph is built once and reused each step (the embedding of a seed
        does not depend on the other seeds).
        """
        trained = self.trained_genes
        if self.n_views and bool(trained[genes].all()):
            seeds = trained.nonzero().squeeze(1)
            return seeds, torch.searchsorted(seeds, genes)
        seeds, rows = torch.unique(genes, return_inverse=True)
        return seeds, rows

    def node_inputs(
        self, nodes: torch.Tensor, untrained: torch.Tensor | slice | None = None
    ) -> torch.Tensor:
        """(len(nodes), d_model) input vectors: table part + identity part of trained genes,
        the unknown vector for genes with neither; rows ``untrained`` (a boolean mask or a
        slice) are taken as untrained."""
        free_row = self.free_index[nodes]
        trained = self.trained_genes[nodes] & (free_row >= 0)
        if untrained is not None:
            trained = trained.clone()
            trained[untrained] = False
        identity = self.free_input(self.free[free_row.clamp(min=0)])
        x = torch.where(trained[:, None], identity, 0.0)
        known = trained
        if self.table is not None:
            found = self.table_found[nodes]
            x = x + torch.where(found[:, None], self.table_input(self.table[nodes]), 0.0)
            known = known | found
        x = torch.where(known[:, None], x, self.unknown)
        return self.input_norm(x)

    def _encode(
        self,
        seeds: torch.Tensor,
        links: list[LinkInputs] | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(len(seeds), d_model) embeddings of sorted unique seeds, views fused; the first-step
        outputs of each view are appended to ``links`` when given.

        With ``self_dropout`` in training, each seed is taken as untrained (its learned vector
        hidden, everywhere in the subgraph) with probability ``self_dropout``: it is then
        embedded from its neighbours (and table vector) only, as an unseen gene is. (Hiding it
        only for its own row would not do: its vector would come back through 2-hop cycles,
        e.g. regulator -> target -> regulator, and the encoder would learn to recognise trained
        genes from those echoes instead of learning from their neighbours.)
        """
        if hidden is None and self.training and self.self_dropout > 0:
            hidden = torch.rand(len(seeds), device=seeds.device) < self.self_dropout
        if not self.n_views:
            return self.node_inputs(seeds, hidden)
        outputs, present = [], []
        for v, gnn in enumerate(self.gnns):
            sub = self._subgraph(v, seeds)
            mask = None
            if hidden is not None:  # seeds are the first rows of the subgraph
                mask = torch.zeros(len(sub.subset), dtype=torch.bool, device=seeds.device)
                mask[: len(seeds)] = hidden
            x = self.node_inputs(sub.subset, mask)
            if links is not None:
                h, first = gnn(x, sub, return_first=True)
                links.append(LinkInputs(v, first, sub))
            else:
                h = gnn(x, sub)
            outputs.append(h)
            present.append(sub.has_edge)
        return self.fuse(torch.stack(outputs, 1), torch.stack(present, 1))

    def fuse(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Combine per-view embeddings (n, V, d) into (n, d)."""
        raise NotImplementedError

    # ---- computation subgraphs ----------------------------------------------------------------
    def _subgraph(self, view: int, seeds: torch.Tensor) -> _Subgraph:
        """The cached K-hop computation subgraph of ``seeds`` (sorted, unique) in ``view``."""
        key = (view, str(seeds.device), tuple(seeds.tolist()))
        sub = self._cache.get(key)
        if sub is not None:
            self._cache.move_to_end(key)
            return sub
        # Built outside inference mode: the cached tensors are reused by training steps.
        with torch.inference_mode(False), torch.no_grad():
            sub = self._build_subgraph(view, seeds.clone())
        self._cache[key] = sub
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return sub

    def _build_subgraph(self, view: int, seeds: torch.Tensor) -> _Subgraph:
        """Nodes ordered as seeds, new nodes of hop 1, hop 2...; propagation step k updates the
        nodes within K-k hops."""
        edge_index = getattr(self, f"_edge_index_{view}")
        edge_type = getattr(self, f"_edge_type_{view}")
        edge_norm = getattr(self, f"_edge_norm_{view}")
        n_rel = self.gnns[view].convs[0].n_relations
        device = seeds.device
        hops = [seeds]  # nodes within h hops (upstream: messages flow source -> target)
        for h in range(1, self.n_hops + 1):
            subset, _, _, edge_mask = k_hop_subgraph(
                seeds, h, edge_index, num_nodes=self.n_genes, directed=True
            )
            hops.append(subset)
        order, seen = [seeds], torch.zeros(self.n_genes, dtype=torch.bool, device=device)
        seen[seeds] = True
        for subset in hops[1:]:
            new = subset[~seen[subset]]
            seen[new] = True
            order.append(new)
        subset = torch.cat(order)
        local = torch.full((self.n_genes,), -1, dtype=torch.long, device=device)
        local[subset] = torch.arange(len(subset), device=device)
        src, dst = local[edge_index[0, edge_mask]], local[edge_index[1, edge_mask]]
        etype, norm = edge_type[edge_mask], edge_norm[edge_mask]
        layers = []
        for k in range(1, self.n_hops + 1):
            n_dst, n_src = len(hops[self.n_hops - k]), len(hops[self.n_hops - k + 1])
            keep = dst < n_dst
            slot = dst[keep] * n_rel + etype[keep]
            adj_t, adj = relational_adjacency(src[keep], slot, norm[keep], n_dst * n_rel, n_src)
            layers.append(_Layer(n_src, n_dst, adj_t, adj))
        inside = (dst < layers[0].n_dst) & (src < layers[0].n_dst)  # first-step outputs exist
        return _Subgraph(
            subset=subset,
            layers=layers,
            edge_index=torch.stack([src[inside], dst[inside]]),
            edge_type=etype[inside],
            has_edge=slots_with_edges(layers[-1].adj_t, n_rel).any(1),
        )

    def _apply(self, fn, *args, **kwargs):
        # Moving the module (device / dtype) invalidates the cached subgraphs.
        self._cache = OrderedDict()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


class RGCNPerturbationEncoder(GraphPerturbationEncoder):
    """Relational GCN over one multi-relational gene graph (or none: table vectors only).

    See :class:`GraphPerturbationEncoder` for the parameters; ``graphs`` holds at most one view.

    Examples
    --------
    >>> g = GraphTensors(edge_index, edge_type, edge_weight, ["go", "omnipath_transcriptional"])
    >>> enc = RGCNPerturbationEncoder(n_genes=20000, d_model=64, graphs=[g])
    >>> enc(torch.tensor([[3, -1], [3, 7]])).shape  # "A", "A+B"
    torch.Size([2, 64])
    """

    def __init__(self, n_genes: int, d_model: int, graphs: Sequence[GraphTensors] = (), **kwargs):
        graphs = list(graphs)
        if len(graphs) > 1:
            raise ValueError(
                "RGCNPerturbationEncoder takes one graph (its relations are kept apart); unite "
                "graphs first (GeneGraph.union) or use MultiViewPerturbationEncoder"
            )
        super().__init__(n_genes, d_model, graphs, **kwargs)

    def fuse(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return views[:, 0]


class MultiViewPerturbationEncoder(GraphPerturbationEncoder):
    """One relational propagation per graph (view), fused per node by learned view attention.

    See :class:`GraphPerturbationEncoder` for the parameters.
    """

    def __init__(self, n_genes: int, d_model: int, graphs: Sequence[GraphTensors] = (), **kwargs):
        super().__init__(n_genes, d_model, list(graphs), **kwargs)
        self.view_attention = ViewAttention(d_model)

    def fuse(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.view_attention(views, present)
