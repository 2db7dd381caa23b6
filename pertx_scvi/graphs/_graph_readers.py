"""The readers of :class:`~pertx_scvi.graphs.GeneGraph`: one constructor per source format
(GEARS GO, GO annotations, OmniPath, TRRUST, STRING, edge lists), format detection, ``write``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import _go_sources as GO
from . import _loaders as L
from ._id_mapping import IdTable
from ._report import GraphReport

if TYPE_CHECKING:  # pragma: no cover
    from ._gene_graph import GeneGraph

PathLike = L.PathLike


class GraphReadersMixin:
    """Constructors of :class:`~pertx_scvi.graphs.GeneGraph` from files and tables."""

    @classmethod
    def _finish(
        cls,
        edges: pd.DataFrame,
        rep: GraphReport,
        id_table: IdTable | None = None,
        drop_unmapped: bool = False,
    ) -> GeneGraph:
        graph = cls(edges, [rep])
        if id_table is not None:
            mapped = graph.map_ids(id_table, drop_unmapped=drop_unmapped, log=False)
            m = mapped.report
            rep.n_ids_mapped, rep.n_ids_unmapped = m.n_ids_mapped, m.n_ids_unmapped
            rep.n_ids_ambiguous = m.n_ids_ambiguous
            rep.unmapped_sample, rep.ambiguous_sample = m.unmapped_sample, m.ambiguous_sample
            rep.mapped_sample = m.mapped_sample
            rep.dropped.update(m.dropped)
            rep.notes.extend(m.notes)
            rep.n_edges_kept = mapped.n_edges
            graph = cls(mapped.edges, [rep])
        else:
            note = L.unmapped_uniprot_note(graph.genes)
            if note:
                rep.notes.append(note)
        rep.log()
        return graph

    @classmethod
    def from_gears_go(
        cls, path: PathLike | pd.DataFrame, min_weight: float = 0.0, id_table: IdTable | None = None
    ) -> GeneGraph:
        """GO co-annotation graph in the GEARS ``go.csv`` format (``source,target,importance``).

        Parameters
        ----------
        path
            CSV file (optionally gzipped) or DataFrame.
        min_weight
            Keep edges with importance >= ``min_weight``.
        id_table
            Optional id table (see :meth:`map_ids`) to map the genes to current symbols.

        Returns
        -------
        GeneGraph
            Relation ``go``, weight = importance (Jaccard), sign 0, undirected.
        """
        return cls._finish(*GO.read_gears_go(path, min_weight=min_weight), id_table=id_table)

    @classmethod
    def from_go_annotations(
        cls,
        path_or_df: PathLike | pd.DataFrame,
        min_jaccard: float = 0.1,
        top_k: int = 20,
        ontologies: Sequence[str] | None = ("BP", "MF", "CC"),
        max_genes_per_term: int | None = None,
        exclude_evidence: Sequence[str] | None = ("ND",),
        id_table: IdTable | None = None,
        n_jobs: int | None = None,
    ) -> GeneGraph:
        """GO co-annotation graph from gene -> GO term annotations.

        For each gene, its ``top_k`` other genes by Jaccard similarity of their GO-term sets, kept
        when the similarity is >= ``min_jaccard`` (ties at the k-th similarity broken by gene
        name). This is how GEARS builds its ``go.csv``: on ``human_gene2go.tsv.gz`` the defaults
        give the 409,189 edges over 20,676 genes of ``go_top20_jaccard.csv.gz``, identical up
        to the choice among tied genes. Exact (all terms, all gene pairs) and vectorised: broad
        terms go through a small dense product, the rest through a sparse one, in row chunks.

        Parameters
        ----------
        path_or_df
            Annotation table (``human_gene2go.tsv.gz`` layout: ``symbol``, ``go_id``, optional
            ``evidence`` and ``ontology``) or a DataFrame with those columns.
        min_jaccard
            Minimum Jaccard similarity of an edge.
        top_k
            Neighbours per gene.
        ontologies
            GO aspects to use (``BP``, ``MF``, ``CC``), when the table has an ``ontology`` column.
        max_genes_per_term
            Drop terms annotating more genes than this (e.g. "protein binding", 12,554 genes)
            before computing the similarities; the Jaccard is then computed over the kept terms.
            None (default) keeps all terms; dropping broad terms changes the graph a lot
            (about half of the edges at 1000) and is not needed for speed.
        exclude_evidence
            Evidence codes to ignore; ``ND`` marks "no data" annotations to the root terms.
        id_table
            Optional id table to map the genes to current symbols (see :meth:`map_ids`).
        n_jobs
            Threads for the chunked similarity (default: up to 4).

        Returns
        -------
        GeneGraph
            Relation ``go``, weight = Jaccard, sign 0, undirected.
        """
        edges, rep = GO.go_annotation_edges(
            path_or_df,
            min_jaccard=min_jaccard,
            top_k=top_k,
            ontologies=ontologies,
            max_genes_per_term=max_genes_per_term,
            exclude_evidence=exclude_evidence,
            n_jobs=n_jobs,
        )
        return cls._finish(edges, rep, id_table=id_table)

    @classmethod
    def from_omnipath(
        cls,
        path: PathLike | pd.DataFrame,
        id_table: IdTable | None = None,
        types: str | Sequence[str] | None = None,
        complexes: str = "drop",
        drop_unmapped: bool = False,
    ) -> GeneGraph:
        """OmniPath interactions (``source,target,is_directed,...,type,...,n_references``).

        - Relations: one per interaction ``type``, named ``omnipath_<type>``
          (``omnipath_transcriptional``, ``omnipath_post_translational``...).
        - Sign: +1 when ``consensus_stimulation`` and not ``consensus_inhibition``, -1 for the
          reverse, 0 otherwise (both or neither).
        - Weight: ``1 + log1p(n_references)`` (missing = 0 references, weight 1): an edge with
          one reference weighs 1.69, with 10 about 3.4, with 500 about 7.2.
        - Directed as in ``is_directed``.
        - miRNA ids (``MIMAT...``) are dropped with their edges (this removes the
          ``post_transcriptional`` and ``mirna_transcriptional`` types almost entirely);
          ``COMPLEX:`` ids are dropped too, or replaced by their members (``complexes="expand"``:
          one edge per member, all member pairs between two complexes). Counts are in the report.
        - With ``id_table``, UniProt accessions and outdated symbols are mapped to current
          symbols (see :meth:`map_ids`); without it they stay as they are.
        - Duplicate ``(type, source, target)`` rows, also those created by the id mapping, are
          merged (largest weight; see :meth:`union` for the sign).

        Parameters
        ----------
        path
            CSV file (optionally gzipped) or DataFrame.
        id_table
            Path to ``human_gene_ids.tsv.gz`` or a DataFrame ``id, id_type, symbol``.
        types
            OmniPath types to keep (with or without the ``omnipath_`` prefix); None keeps all.
        complexes
            ``"drop"`` (default) or ``"expand"``.
        drop_unmapped
            With ``id_table``: drop edges whose ids are not current symbols and cannot be mapped.

        Returns
        -------
        GeneGraph
        """
        edges, rep = L.read_omnipath(path, types=types, complexes=complexes)
        return cls._finish(edges, rep, id_table=id_table, drop_unmapped=drop_unmapped)

    @classmethod
    def from_trrust(
        cls, path: PathLike | pd.DataFrame, id_table: IdTable | None = None
    ) -> GeneGraph:
        """TRRUST v2 TF -> target table (``Gene1 Gene2 Mode_of_Regulation PMID``).

        Relation ``trrust``, directed TF -> target. Rows repeating a pair with another mode are
        merged: sign +1 (Activation), -1 (Repression), 0 when Unknown only or when both
        Activation and Repression are reported. Weight ``1 + log1p(#distinct PubMed ids)``
        (one PMID: 1.69). The raw TRRUST file without a header line is read too.

        Parameters
        ----------
        path
            Tab-separated file or DataFrame.
        id_table
            Optional id table to map the genes to current symbols (see :meth:`map_ids`).

        Returns
        -------
        GeneGraph
        """
        return cls._finish(*L.read_trrust(path), id_table=id_table)

    @classmethod
    def from_string(
        cls,
        links: PathLike | pd.DataFrame,
        info: PathLike | pd.DataFrame | None = None,
        threshold: float = 0.4,
        channels: str | Sequence[str] | None = None,
        id_table: IdTable | None = None,
    ) -> GeneGraph:
        """STRING ``protein.links.detailed.v*.txt(.gz)`` or ``protein.links.full.v*.txt(.gz)``.

        Space-separated with a header ``protein1 protein2 <channel scores...> combined_score``,
        scores 0-1000; or a table already named by gene symbol, with a header ``gene1 gene2
        [entrez1 entrez2] <channel scores...> combined_score`` (e.g. STRING v12 as packaged in
        the dmfind R package). Each evidence channel becomes a relation ``string_<channel>``
        (``string_experiments``, ``string_database``, ``string_textmining``,
        ``string_coexpression``, ``string_neighborhood``, ``string_fusion``,
        ``string_cooccurence``; the detailed file's ``experimental`` is named ``experiments``
        as in the full file; ``combined_score`` is ``string_combined``), weight = score / 1000,
        kept when >= ``threshold``; undirected, stored once per pair (source < target).

        Parameters
        ----------
        links
            The links file (or a DataFrame with its columns).
        info
            ``protein.info.v*.txt(.gz)`` (tab-separated ``#string_protein_id preferred_name
            ...``) to name the ``9606.ENSP...`` ids by gene symbol. Without it, nodes are the
            ENSP ids (taxon prefix removed).
        threshold
            Minimum channel score / 1000.
        channels
            Channels to use. Default: the non-transferred evidence channels present in the file
            (not ``homology``, ``*_transferred`` or ``combined_score``; only ``combined_score``
            when no channel column exists). Pass ``"combined_score"`` for a single relation.
        id_table
            Optional id table to map the preferred names to current symbols.

        Returns
        -------
        GeneGraph
        """
        edges, rep = L.read_string(links, info=info, threshold=threshold, channels=channels)
        return cls._finish(edges, rep, id_table=id_table)

    @classmethod
    def from_edges(
        cls,
        df: pd.DataFrame,
        source: str = "source",
        target: str = "target",
        weight: str | None = None,
        relation: str = "custom",
        sign: str | None = None,
        directed: bool | str = True,
        id_table: IdTable | None = None,
    ) -> GeneGraph:
        """A graph from any edge list.

        Parameters
        ----------
        df
            The edge list.
        source, target
            Column names of the two ends.
        weight
            Column of weights (> 0; rows with a missing or non-positive weight are dropped and
            counted); None: all 1.
        relation
            A relation name, or the name of a column of ``df`` holding relation names.
        sign
            Column of signs: numbers (their sign is used) or words (``activation``,
            ``repression``, ``+``, ``-``...); None: all 0 (unknown).
        directed
            Whether the edges are directed, or the name of a boolean column.
        id_table
            Optional id table to map the ids to current symbols (see :meth:`map_ids`).

        Returns
        -------
        GeneGraph
        """
        edges, rep = L.edges_from_frame(
            df,
            source=source,
            target=target,
            weight=weight,
            relation=relation,
            sign=sign,
            directed=directed,
        )
        return cls._finish(edges, rep, id_table=id_table)

    @classmethod
    def read(
        cls, path: PathLike | pd.DataFrame | GeneGraph | Sequence[Any], **kwargs: Any
    ) -> GeneGraph:
        """Read a graph from a file of a known format, telling the format from the header.

        Formats: GEARS ``go.csv`` (:meth:`from_gears_go`), gene -> GO annotations
        (:meth:`from_go_annotations`), OmniPath (:meth:`from_omnipath`), TRRUST
        (:meth:`from_trrust`), STRING links (:meth:`from_string`) and edge tables written by
        :meth:`write` or any ``source,target[,weight,relation,sign,directed]`` table
        (:meth:`from_edges`). A :class:`GeneGraph` is returned as it is, a DataFrame is read as
        an edge table, and a list of any of these is read item by item and united.

        Parameters
        ----------
        path
            File path, DataFrame, GeneGraph or a list of them.
        **kwargs
            Passed to the loader (e.g. ``id_table=``, ``info=`` for STRING). For a list, each
            loader gets the arguments it accepts.

        Returns
        -------
        GeneGraph

        Raises
        ------
        ValueError
            When the file is not a readable table or its format is not recognised.
        """
        if isinstance(path, cls):
            return path
        if isinstance(path, list | tuple):
            if not path:
                raise ValueError("GeneGraph.read: empty list of graph files")
            graphs = [cls._read_one(p, kwargs, strict=False) for p in path]
            return cls.union(*graphs)
        return cls._read_one(path, kwargs, strict=True)

    @classmethod
    def _read_one(cls, path: Any, kwargs: dict[str, Any], strict: bool) -> GeneGraph:
        if isinstance(path, cls):
            return path
        if isinstance(path, pd.DataFrame):
            fmt = "edges"
            frame: pd.DataFrame | None = path
        else:
            if not isinstance(path, str | os.PathLike):
                raise TypeError(f"GeneGraph.read: expected a path, got {type(path).__name__}")
            path = Path(path).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"graph file not found: {path}")
            fmt = L.detect_format(path)
            frame = None
        loader = {
            "gears_go": cls.from_gears_go,
            "go_annotations": cls.from_go_annotations,
            "omnipath": cls.from_omnipath,
            "trrust": cls.from_trrust,
            "string": cls.from_string,
            "edges": cls._from_edge_file,
        }[fmt]
        if not strict:
            accepted = inspect.signature(loader).parameters
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        return loader(path if frame is None else frame, **kwargs)

    @classmethod
    def _from_edge_file(
        cls, path: PathLike | pd.DataFrame, id_table: IdTable | None = None
    ) -> GeneGraph:
        if isinstance(path, pd.DataFrame):
            df = path
        else:
            df, _ = L._read_frame(
                path,
                "read",
                dtype={"source": str, "target": str},
                keep_default_na=False,
                na_values={"weight": [""]},
            )
        cols = {c.lower(): c for c in df.columns}
        if "source" not in cols or "target" not in cols:
            raise ValueError(
                f"edge table needs 'source' and 'target' columns; found {list(df.columns)}"
            )
        weight = next((cols[c] for c in ("weight", "importance", "score") if c in cols), None)
        return cls.from_edges(
            df,
            source=cols["source"],
            target=cols["target"],
            weight=weight,
            relation=cols.get("relation", "custom"),
            sign=cols.get("sign"),
            directed=cols.get("directed", True),
            id_table=id_table,
        )

    def write(self, path: PathLike) -> None:
        """Write the edge table as CSV (gzipped for a ``.gz`` name); :meth:`read` reads it back."""
        self._edges.to_csv(path, index=False)
