"""`GeneGraph`: a multi-relational gene graph kept as a pandas edge table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import _loaders as L
from ._graph_readers import GraphReadersMixin
from ._id_mapping import IdTable, load_id_table, map_to_symbols, resolve_names
from ._report import GraphReport, sample

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Data

PathLike = L.PathLike

REVERSE_SUFFIX = "~rev"
"""Suffix of the name of a directed relation's reverse (:meth:`GeneGraph.to_pyg`)."""


class GeneGraph(GraphReadersMixin):
    """A multi-relational gene graph kept as an edge table.

    The edge table (:attr:`edges`) is a :class:`pandas.DataFrame` with the columns

    ``source``, ``target``
        gene ids (strings; current HGNC symbols after :meth:`map_ids`),
    ``relation``
        categorical relation name: ``go``, ``omnipath_transcriptional``,
        ``omnipath_post_translational``, ``trrust``, ``string_experiments``, ``custom``...,
    ``weight``
        float32 > 0, from the source (Jaccard, score / 1000, 1 + log1p(#references)...),
    ``sign``
        int8: +1 activation, -1 inhibition / repression, 0 unknown,
    ``directed``
        bool: False for symmetric relations (GO co-annotation, STRING), whose rows are read in
        both directions by :meth:`to_pyg` whatever its ``undirected`` argument.

    Each ``(relation, source, target)`` occurs once. The table does not need torch; only
    :meth:`to_pyg` imports torch / torch_geometric. Treat a graph as immutable: operations return
    new graphs.

    Parameters
    ----------
    edges
        A DataFrame with at least ``source`` and ``target``; missing ``relation`` (``"custom"``),
        ``weight`` (1), ``sign`` (0) and ``directed`` (True) columns are filled in.
    reports
        What built the graph (loaders, id mapping); see :attr:`report`.

    Examples
    --------
    >>> g = GeneGraph.from_gears_go("go_top20_jaccard.csv.gz") | GeneGraph.from_omnipath(
    ...     "omnipath_interactions.csv.gz", id_table="human_gene_ids.tsv.gz")
    >>> g.missing(["STAT1", "MARCH8"])
    ['MARCH8']
    >>> data = g.to_pyg(genes=adata.var_names)  # nodes in the model's gene order
    """

    def __init__(
        self,
        edges: pd.DataFrame | None = None,
        reports: GraphReport | Sequence[GraphReport] | None = None,
    ) -> None:
        if edges is None:
            edges = pd.DataFrame(columns=["source", "target"])
        if not isinstance(edges, pd.DataFrame):
            raise TypeError(f"edges must be a pandas DataFrame, not {type(edges).__name__}")
        if "source" not in edges.columns or "target" not in edges.columns:
            raise ValueError(
                f"edges need 'source' and 'target' columns; found {list(edges.columns)}"
            )
        defaults = {"relation": "custom", "weight": 1.0, "sign": 0, "directed": True}
        missing = {k: v for k, v in defaults.items() if k not in edges.columns}
        if missing:
            edges = edges.assign(**missing)
        self._edges = L.canonical_edges(edges)
        if isinstance(reports, GraphReport):
            reports = [reports]
        self._reports: list[GraphReport] = list(reports or [])

    # ------------------------------------------------------------------ basic properties
    @property
    def edges(self) -> pd.DataFrame:
        """The edge table (``source, target, relation, weight, sign, directed``); do not modify."""
        return self._edges

    @cached_property
    def genes(self) -> pd.Index:
        """Sorted :class:`pandas.Index` of the nodes (genes with at least one edge)."""
        e = self._edges
        nodes = pd.unique(np.concatenate([e["source"].to_numpy(), e["target"].to_numpy()]))
        return pd.Index(np.sort(nodes.astype(object)), dtype=object, name="gene")

    @cached_property
    def _codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer node codes (positions in :attr:`genes`) of sources and targets."""
        g = self.genes
        return g.get_indexer(self._edges["source"]), g.get_indexer(self._edges["target"])

    @property
    def relations(self) -> list[str]:
        """Relation names present in the graph (sorted)."""
        rel = self._edges["relation"]
        return sorted(rel.cat.categories[np.unique(rel.cat.codes)].tolist()) if len(rel) else []

    @property
    def n_edges(self) -> int:
        """Number of edges (rows of the edge table)."""
        return len(self._edges)

    @property
    def n_genes(self) -> int:
        """Number of nodes."""
        return len(self.genes)

    @property
    def report(self) -> GraphReport | None:
        """Report of the last step that built this graph (loader, :meth:`map_ids`, union...)."""
        return self._reports[-1] if self._reports else None

    @property
    def reports(self) -> list[GraphReport]:
        """Reports of all steps that built this graph, oldest first (a union keeps both sides')."""
        return list(self._reports)

    def __len__(self) -> int:
        return self.n_edges

    def __contains__(self, gene: object) -> bool:
        return gene in self.genes

    def summary(self) -> pd.DataFrame:
        """Per relation: edges, genes, whether directed, fraction of signed edges."""
        e = self._edges
        rows = []
        for rel in self.relations:
            sub = e[e["relation"] == rel]
            n_genes = len(
                pd.unique(np.concatenate([sub["source"].to_numpy(), sub["target"].to_numpy()]))
            )
            rows.append(
                {
                    "relation": rel,
                    "n_edges": len(sub),
                    "n_genes": n_genes,
                    "directed": bool(sub["directed"].any()),
                    "frac_signed": float((sub["sign"] != 0).mean()),
                    "mean_weight": float(sub["weight"].mean()),
                }
            )
        cols = ["relation", "n_edges", "n_genes", "directed", "frac_signed", "mean_weight"]
        return pd.DataFrame(rows, columns=cols).set_index("relation")

    def __repr__(self) -> str:
        head = (
            f"GeneGraph: {self.n_genes:,} genes, {self.n_edges:,} edges, "
            f"{len(self.relations)} relation(s)"
        )
        if not self.n_edges:
            return head
        s = self.summary()
        width = max(len(r) for r in s.index)
        lines = [head]
        for rel, row in s.iterrows():
            kind = "directed" if row["directed"] else "undirected"
            signed = f", {row['frac_signed']:.0%} signed" if row["frac_signed"] else ""
            lines.append(
                f"  {rel:<{width}}  {row['n_edges']:>9,} edges  {row['n_genes']:>7,} genes"
                f"  ({kind}{signed})"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ combining / subsetting
    @classmethod
    def union(cls, *graphs: GeneGraph) -> GeneGraph:
        """Union of graphs: edge tables concatenated, relations kept apart.

        Edges repeated within one relation are merged: the largest weight is kept; the sign is
        +1 (-1) when the repeats carry only positive (negative) and unknown signs and 0 when they
        disagree; the edge is directed when any repeat is. The reports of all graphs are kept.
        """
        graphs = tuple(g if isinstance(g, GeneGraph) else cls.read(g) for g in graphs)
        if not graphs:
            return cls()
        frames = [g.edges for g in graphs if g.n_edges] or [graphs[0].edges]
        n_in = sum(len(f) for f in frames)
        edges = L.merge_duplicates(L.canonical_edges(pd.concat(frames, ignore_index=True)))
        rep = GraphReport("union", n_edges_read=n_in, n_edges_kept=len(edges))
        if n_in - len(edges):
            rep.notes.append(f"{n_in - len(edges):,} duplicate edges within a relation merged")
        reports = [r for g in graphs for r in g.reports] + [rep]
        return cls(edges, reports)

    def __or__(self, other: GeneGraph) -> GeneGraph:
        if not isinstance(other, GeneGraph):
            return NotImplemented
        return GeneGraph.union(self, other)

    def select_relations(self, relations: str | Iterable[str]) -> GeneGraph:
        """The graph restricted to some relations (names, or prefixes ending in ``*``)."""
        rels = [relations] if isinstance(relations, str) else list(relations)
        keep = []
        for r in rels:
            hits = [
                x for x in self.relations if (x.startswith(r[:-1]) if r.endswith("*") else x == r)
            ]
            if not hits:
                raise ValueError(f"no relation {r!r} in the graph; relations: {self.relations}")
            keep.extend(hits)
        e = self._edges[self._edges["relation"].isin(keep).to_numpy()]
        return GeneGraph(e, self._reports)

    def restrict(self, genes: Iterable[str], hops: int = 0) -> GeneGraph:
        """Keep the edges among ``genes``, or among the genes within ``hops`` steps of them.

        Parameters
        ----------
        genes
            Seed genes (those absent from the graph are ignored and counted in the report).
        hops
            0: edges with both ends in ``genes``. k > 0: the seed set is grown k times by all
            neighbours (any relation, either direction) and the edges among the grown set kept
            (the induced subgraph of the k-hop neighbourhood).

        Returns
        -------
        GeneGraph
        """
        if hops < 0:
            raise ValueError("hops must be >= 0")
        seeds = pd.Index(pd.unique(pd.Index(list(genes)).astype(str)))
        nodes = self.genes
        inside = np.zeros(len(nodes), dtype=bool)
        pos = nodes.get_indexer(seeds)
        inside[pos[pos >= 0]] = True
        s, t = self._codes
        for _ in range(hops):
            touch = inside[s] | inside[t]
            grown = inside.copy()
            grown[s[touch]] = True
            grown[t[touch]] = True
            if (grown == inside).all():
                break
            inside = grown
        keep = inside[s] & inside[t]
        rep = GraphReport(
            f"restrict({len(seeds):,} genes, hops={hops})",
            n_edges_read=self.n_edges,
            n_edges_kept=int(keep.sum()),
        )
        absent = seeds[pos < 0]
        rep.n_ids_unmapped = len(absent)
        rep.unmapped_sample = sample(absent)
        rep.notes.append(
            f"{int(inside.sum()):,} genes kept; {len(absent):,} seed genes not in the graph"
        )
        return GeneGraph(self._edges[keep], self._reports + [rep])

    def map_ids(
        self, id_table: IdTable, drop_unmapped: bool = False, log: bool = True
    ) -> GeneGraph:
        """Rename node ids that are not current symbols (aliases, UniProt, Ensembl, Entrez).

        Rules: an id that is a current symbol (in the table's ``symbol`` column) is kept, even
        when it is also an alias of another gene. Other ids are looked up in the table (after
        stripping an Ensembl version or UniProt isoform suffix when the exact id is not found).
        An id with one candidate symbol is renamed. An id with several candidates (an alias
        shared by several genes, e.g.) is renamed only when exactly one candidate is itself a
        node of this graph; otherwise it is ambiguous and left unchanged. Ids that match nothing
        are unmapped: kept, or dropped with their edges when ``drop_unmapped``. Edges that become
        identical are merged (see :meth:`union`).

        Parameters
        ----------
        id_table
            Path to ``human_gene_ids.tsv.gz`` (``id, id_type, symbol``) or such a DataFrame.
        drop_unmapped
            Drop the edges of unmapped and ambiguous ids.
        log
            Log the one-line summary.

        Returns
        -------
        GeneGraph
            The mapped graph; its :attr:`report` says what was mapped (counts per id type in the
            notes, samples of renamings and of unmapped / ambiguous ids).
        """
        table = load_id_table(id_table)
        nodes = self.genes
        res = map_to_symbols(nodes, table, context=nodes)
        new = nodes.to_numpy(dtype=object).copy()
        mapped_pos = nodes.get_indexer(list(res.mapping))
        new[mapped_pos] = list(res.mapping.values())
        s, t = self._codes
        edges = self._edges.assign(source=new[s], target=new[t])
        rep = GraphReport("map_ids", n_edges_read=self.n_edges)
        if drop_unmapped and (res.unmapped or res.ambiguous):
            bad = np.zeros(len(nodes), dtype=bool)
            bad[nodes.get_indexer(res.unmapped + res.ambiguous)] = True
            drop = bad[s] | bad[t]
            edges = edges[~drop]
            rep.dropped["unmapped_edges"] = int(drop.sum())
        edges = L.merge_duplicates(L.canonical_edges(edges))
        rep.n_edges_kept = len(edges)
        rep.n_ids_mapped = len(res.mapping)
        rep.n_ids_unmapped = len(res.unmapped)
        rep.n_ids_ambiguous = len(res.ambiguous)
        rep.unmapped_sample = sample(res.unmapped)
        rep.ambiguous_sample = sample(res.ambiguous)
        rep.mapped_sample = dict(sorted(res.mapping.items())[:20])
        if res.by_type:
            rep.notes.append(
                "mapped by " + ", ".join(f"{k} {v:,}" for k, v in sorted(res.by_type.items()))
            )
        rep.notes.append(f"{res.n_symbols:,} ids were current symbols already")
        if log:
            rep.log()
        return GeneGraph(edges, self._reports + [rep])

    # ------------------------------------------------------------------ queries
    def missing(self, genes: Iterable[str]) -> list[str]:
        """The given genes that are not nodes of the graph (input order, without repeats)."""
        genes = list(dict.fromkeys(str(g) for g in genes))
        present = pd.Index(genes).isin(self.genes)
        return [g for g, p in zip(genes, present, strict=True) if not p]

    def resolve(
        self, genes: Iterable[str], id_table: IdTable | None = None
    ) -> dict[str, str | None]:
        """Name of each gene in the graph, through the id table where the names differ.

        A gene that is a node maps to itself. Otherwise, with ``id_table``, an outdated name
        maps to its current symbol when that is a node (``MARCH8`` -> ``MARCHF8``), and a
        current symbol maps to its one alias that is a node (when the graph uses an older name).
        Genes without a match map to None.
        """
        table = load_id_table(id_table) if id_table is not None else None
        return resolve_names(list(genes), self.genes, table)

    def neighbors(
        self, gene: str, relation: str | Iterable[str] | None = None, direction: str = "both"
    ) -> list[str]:
        """Sorted neighbours of ``gene`` (empty for a gene that is not in the graph).

        Parameters
        ----------
        gene
            A node.
        relation
            Restrict to one relation or several.
        direction
            ``"out"`` (gene is the source), ``"in"`` (gene is the target) or ``"both"``.
        """
        if direction not in ("out", "in", "both"):
            raise ValueError("direction must be 'out', 'in' or 'both'")
        e = self._edges
        if relation is not None:
            rels = [relation] if isinstance(relation, str) else list(relation)
            e = e[e["relation"].isin(rels).to_numpy()]
        out: set[str] = set()
        if direction in ("out", "both"):
            out.update(e.loc[e["source"].to_numpy() == gene, "target"])
        if direction in ("in", "both"):
            out.update(e.loc[e["target"].to_numpy() == gene, "source"])
        return sorted(out)

    def degree(self, relation: str | None = None, direction: str = "both") -> pd.Series:
        """Number of edge-table rows at each gene (``"out"``, ``"in"`` or ``"both"``).

        A GO pair stored in both directions counts twice in ``"both"``. Indexed by :attr:`genes`
        (zeros included), int64.
        """
        if direction not in ("out", "in", "both"):
            raise ValueError("direction must be 'out', 'in' or 'both'")
        s, t = self._codes
        if relation is not None:
            m = (self._edges["relation"] == relation).to_numpy()
            s, t = s[m], t[m]
        n = len(self.genes)
        deg = np.zeros(n, dtype=np.int64)
        if direction in ("out", "both"):
            deg += np.bincount(s, minlength=n)
        if direction in ("in", "both"):
            deg += np.bincount(t, minlength=n)
        return pd.Series(deg, index=self.genes, name="degree")

    # ------------------------------------------------------------------ tensors / controls
    def to_pyg(
        self,
        genes: Sequence[str] | pd.Index | None = None,
        undirected: bool = True,
        relations: Sequence[str] | None = None,
        reverse_relations: bool = False,
        self_loops: bool = True,
        max_neighbours: int | None = None,
    ) -> Data:
        """The graph as a :class:`torch_geometric.data.Data`.

        The edges are selected in numpy and converted to torch once, in this order: rows among
        ``genes`` and ``relations``, reverse edges (``undirected``, symmetric relations),
        reverse relations, self-loop removal, in-degree cap.

        Parameters
        ----------
        genes
            Node order. Given: the nodes are exactly these genes, in this order (must be unique);
            edges with an end outside them are dropped, and genes without edges are isolated
            nodes. None: :attr:`genes` (sorted).
        undirected
            Add the reverse of every edge. Rows of symmetric relations (``directed`` False: GO,
            STRING) get their reverse in any case. Reverse edges that already exist are not
            added twice (the stored edge wins).
        relations
            Relations to include, in this order (their codes are the positions); default: all,
            sorted.
        reverse_relations
            Give the reverse of each directed relation (one with a directed row) a relation of
            its own, ``"<relation>~rev"`` (:data:`REVERSE_SUFFIX`), coded after the others: a
            regulator then hears from its targets and a target from its regulators through
            different transforms. Needs ``undirected=False``.
        self_loops
            Keep edges from a gene to itself.
        max_neighbours
            Keep, per target and relation, the ``max_neighbours`` heaviest in-edges (ties: the
            first in edge order); None: all. Hub genes of OmniPath have thousands.

        Returns
        -------
        torch_geometric.data.Data
            ``edge_index`` (long, 2 x E; row 0 source, row 1 target), ``edge_type`` (long,
            position in ``relation_names``), ``edge_weight`` (float32), ``edge_sign`` (long,
            +1 / -1 / 0), ``num_nodes``, ``node_names`` (list of str), ``relation_names`` (list
            of str) and ``node_in_graph`` (bool, num_nodes: the node has one of the returned
            edges). Edges are sorted by (type, source, target); a reverse relation's edges
            follow the order of its forward edges.
        """
        import torch
        from torch_geometric.data import Data

        if reverse_relations and undirected:
            raise ValueError("reverse_relations needs undirected=False (reverses are in already)")
        rel_names = self.relations if relations is None else list(relations)
        unknown = [r for r in rel_names if r not in self.relations]
        if unknown:
            raise ValueError(f"unknown relations {unknown}; the graph has {self.relations}")
        if genes is None:
            nodes = self.genes
            s, t = self._codes
        else:
            nodes = pd.Index([str(g) for g in genes], dtype=object)
            if nodes.has_duplicates:
                dup = nodes[nodes.duplicated()].unique()[:5].tolist()
                raise ValueError(f"genes must be unique; repeated: {dup}")
            pos = nodes.get_indexer(self.genes)
            s0, t0 = self._codes
            s, t = pos[s0], pos[t0]
        rel = self._edges["relation"]
        code_of = pd.Index(rel_names).get_indexer(rel.cat.categories)
        r = code_of[rel.cat.codes.to_numpy()]
        w = self._edges["weight"].to_numpy()
        sg = self._edges["sign"].to_numpy()
        directed = self._edges["directed"].to_numpy()
        # Directed relations are judged on the whole table, not on the rows among ``genes``.
        directed_codes = np.unique(r[directed & (r >= 0)])
        keep = (s >= 0) & (t >= 0) & (r >= 0)
        s, t, r, w, sg, directed = s[keep], t[keep], r[keep], w[keep], sg[keep], directed[keep]
        rev = np.ones(len(s), dtype=bool) if undirected else ~directed
        src = np.concatenate([s, t[rev]]).astype(np.int64)
        dst = np.concatenate([t, s[rev]]).astype(np.int64)
        typ = np.concatenate([r, r[rev]]).astype(np.int64)
        wt = np.concatenate([w, w[rev]])
        sgn = np.concatenate([sg, sg[rev]])
        n = len(nodes)
        key = (typ * n + src) * n + dst
        _, first = np.unique(key, return_index=True)  # sorted keys; first = stored edge
        src, dst, typ = src[first], dst[first], typ[first]
        wt, sgn = wt[first].astype(np.float32), sgn[first].astype(np.int64)
        rel_names = list(rel_names)
        if reverse_relations:
            parts = [(src, dst, typ, wt, sgn)]
            for code in directed_codes:
                m = typ == code
                parts.append((dst[m], src[m], np.full(int(m.sum()), len(rel_names)), wt[m], sgn[m]))
                rel_names.append(rel_names[code] + REVERSE_SUFFIX)
            src, dst, typ, wt, sgn = (np.concatenate(p) for p in zip(*parts, strict=True))
        keep = np.ones(len(src), dtype=bool) if self_loops else src != dst
        if max_neighbours:
            keep[keep] = cap_in_degree(
                np.stack([src[keep], dst[keep]]), typ[keep], wt[keep], max_neighbours
            )
        src, dst, typ, wt, sgn = src[keep], dst[keep], typ[keep], wt[keep], sgn[keep]
        has_edge = np.zeros(n, dtype=bool)
        has_edge[src] = True
        has_edge[dst] = True
        return Data(
            edge_index=torch.from_numpy(np.stack([src, dst])),
            edge_type=torch.from_numpy(typ),
            edge_weight=torch.from_numpy(wt),
            edge_sign=torch.from_numpy(sgn),
            num_nodes=n,
            node_names=nodes.tolist(),
            relation_names=rel_names,
            node_in_graph=torch.from_numpy(has_edge),
        )

    def shuffled(self, seed: int = 0, max_rounds: int = 500) -> GeneGraph:
        """A degree-preserving random rewiring, for "same model, shuffled graph" controls.

        Within each relation the targets are permuted among the edges: every gene keeps its
        out-degree and in-degree per relation (so :meth:`degree` is unchanged), and every edge
        keeps its source, weight, sign and direction flag; who connects to whom is random.
        Self-loops and repeated edges created by the permutation are then repaired by swapping
        their targets with those of random other edges of the relation (swaps that create no new
        self-loop or repeat; degrees stay exact). Should some be left after ``max_rounds``
        rounds (not seen on the shipped graphs), they are merged and counted in the report.
        The node set is unchanged.

        Parameters
        ----------
        seed
            Random seed.
        max_rounds
            Rounds of repair swaps.

        Returns
        -------
        GeneGraph
        """
        if max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")
        rng = np.random.default_rng(seed)
        s, t = self._codes
        s = s.astype(np.int64)
        n = max(len(self.genes), 1)
        new_t = t.astype(np.int64)
        rel_codes = self._edges["relation"].cat.codes.to_numpy()
        order = np.argsort(rel_codes, kind="stable")
        bounds = np.flatnonzero(np.diff(rel_codes[order])) + 1
        left = 0
        for idx in np.split(order, bounds):
            if len(idx) < 2:
                continue
            ss = s[idx]
            tt = new_t[idx][rng.permutation(len(idx))]
            left += _repair_rewiring(ss, tt, n, rng, max_rounds)
            new_t[idx] = tt
        edges = self._edges.assign(target=self.genes.to_numpy(dtype=object)[new_t])
        rep = GraphReport(f"shuffled(seed={seed})", n_edges_read=self.n_edges)
        if left:
            rep.notes.append(f"{left:,} self-loops / repeated edges left after {max_rounds} rounds")
            edges = L.merge_duplicates(edges)
        rep.n_edges_kept = len(edges)
        return GeneGraph(edges, self._reports + [rep])


def cap_in_degree(
    edge_index: np.ndarray,
    edge_type: np.ndarray,
    edge_weight: np.ndarray,
    max_neighbours: int | None,
) -> np.ndarray:
    """Mask keeping, per (target, relation), the ``max_neighbours`` heaviest in-edges.

    Ties go to the edge that comes first; None or 0: keep all.
    """
    if max_neighbours is None or max_neighbours <= 0 or not len(edge_type):
        return np.ones(len(edge_type), dtype=bool)
    order = np.lexsort((-edge_weight, edge_type, edge_index[1]))
    group = edge_index[1][order].astype(np.int64) * (int(edge_type.max()) + 1) + edge_type[order]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.zeros(len(order), dtype=bool)
    keep[order[rank < max_neighbours]] = True
    return keep


def _repair_rewiring(
    s: np.ndarray, t: np.ndarray, n: int, rng: np.random.Generator, max_rounds: int
) -> int:
    """Swap targets (in place) until no self-loop / repeated (s, t) is left; returns how many are.

    Each round proposes, for every bad edge, a swap of targets with a random edge; swaps that
    would create a self-loop or an existing pair, or that share an edge or a new pair with
    another swap of the round, are skipped. Degrees are unchanged by any swap.
    """
    bad = np.zeros(len(s), dtype=bool)
    for _ in range(max_rounds):
        key = s * n + t
        bad = (s == t) | pd.Series(key).duplicated().to_numpy()
        if not bad.any():
            return 0
        b = np.flatnonzero(bad)
        p = rng.integers(0, len(s), size=len(b))
        kb = s[b] * n + t[p]
        kp = s[p] * n + t[b]
        existing = np.sort(key)
        ok = (s[b] != t[p]) & (s[p] != t[b]) & (kb != kp)
        ok &= ~_in_sorted(kb, existing) & ~_in_sorted(kp, existing)
        b, p, kb, kp = b[ok], p[ok], kb[ok], kp[ok]
        # each edge and each new pair in at most one swap per round
        _, inv, cnt = np.unique(np.concatenate([b, p]), return_inverse=True, return_counts=True)
        _, kinv, kcnt = np.unique(np.concatenate([kb, kp]), return_inverse=True, return_counts=True)
        m = len(b)
        single = (cnt[inv[:m]] == 1) & (cnt[inv[m:]] == 1)
        single &= (kcnt[kinv[:m]] == 1) & (kcnt[kinv[m:]] == 1)
        b, p = b[single], p[single]
        t[b], t[p] = t[p], t[b].copy()
    key = s * n + t
    bad = (s == t) | pd.Series(key).duplicated().to_numpy()
    return int(bad.sum())


def _in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Membership of ``values`` in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_keys, values)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == values
