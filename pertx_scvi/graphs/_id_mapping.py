"""Map gene ids (aliases, UniProt, Ensembl, Entrez) to current HGNC symbols.

The id table has the columns ``id, id_type, symbol`` (``id_type`` one of ``alias``, ``uniprot``,
``ensembl``, ``entrez``), like ``human_gene_ids.tsv.gz`` (NCBI Entrez Gene via Bioconductor
org.Hs.eg.db). Its ``symbol`` column defines what a *current symbol* is.

Rules (used by :meth:`GeneGraph.map_ids`, the loaders' ``id_table=`` argument and
:meth:`GeneGraph.resolve`):

1. An id that is a current symbol is kept as it is, even when it is also an alias of another gene
   (a current symbol always wins).
2. Otherwise the id is looked up in the table (all id types at once; exact, case-sensitive). When
   nothing matches, a version suffix (``ENSG00000165406.12``) or a UniProt isoform suffix
   (``P60484-2``) is stripped and the lookup repeated.
3. One candidate symbol: mapped. Several candidates (an alias shared by several genes, or a
   UniProt accession of several genes): mapped only when exactly one candidate is itself a node
   of the graph (the "context"); otherwise the id is *ambiguous* and left as it is.
4. Ids that match nothing are *unmapped*: kept as they are, or dropped on request.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

IdTable = str | os.PathLike | pd.DataFrame

_ID_COLUMNS = ("id", "id_type", "symbol")


@functools.lru_cache(maxsize=4)
def _read_id_table_cached(path: str, mtime: float) -> pd.DataFrame:  # noqa: ARG001 (cache key)
    df = pd.read_csv(path, sep="\t" if _is_tsv(path) else ",", dtype=str, keep_default_na=False)
    return _check_id_table(df, path)


def _is_tsv(path: str) -> bool:
    name = path.lower().removesuffix(".gz")
    return name.endswith((".tsv", ".txt", ".tab"))


def _check_id_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    cols = {c.lower(): c for c in df.columns}
    if "id" not in cols or "symbol" not in cols:
        raise ValueError(
            f"id table {where} needs the columns 'id' and 'symbol' (and optionally 'id_type'); "
            f"found {list(df.columns)}"
        )

    def text(col: str) -> pd.Series:
        s = df[cols[col]]
        return s.where(s.notna(), "").astype(str)

    out = pd.DataFrame(
        {
            "id": text("id"),
            "id_type": text("id_type") if "id_type" in cols else "id",
            "symbol": text("symbol"),
        }
    )
    out = out[(out["id"] != "") & (out["symbol"] != "")]
    return out.drop_duplicates(["id", "symbol"]).reset_index(drop=True)


def load_id_table(id_table: IdTable) -> pd.DataFrame:
    """Read an id table (path or DataFrame) into a DataFrame ``id, id_type, symbol`` (strings).

    Parameters
    ----------
    id_table
        Path to a table like ``human_gene_ids.tsv.gz`` (tab- or comma-separated, optionally
        gzipped) or a DataFrame with the columns ``id`` and ``symbol`` (``id_type`` optional).

    Returns
    -------
    pd.DataFrame
        Columns ``id, id_type, symbol``; duplicate ``(id, symbol)`` rows removed. Reads from a path
        are cached (by path and modification time): do not modify the returned frame.
    """
    if isinstance(id_table, pd.DataFrame):
        return _check_id_table(id_table, "DataFrame")
    path = Path(id_table)
    if not path.exists():
        raise FileNotFoundError(f"id table not found: {path}")
    return _read_id_table_cached(str(path.resolve()), path.stat().st_mtime)


@dataclass
class IdMapping:
    """Result of mapping a set of ids to current symbols (see the module docstring for the rules).

    Attributes
    ----------
    mapping
        ``{id: symbol}`` for the ids that were renamed (ids already current symbols not included).
    unmapped
        Ids that are not current symbols and matched nothing.
    ambiguous
        Ids with several candidate symbols, none singled out by the context.
    by_type
        Number of mapped ids per ``id_type`` of the matching table row.
    n_symbols
        Number of ids that were current symbols already.
    """

    mapping: dict[str, str]
    unmapped: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)
    n_symbols: int = 0


_VERSION = r"^(ENS[A-Z]*\d+)\.\d+$"
_ISOFORM = r"^([OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})-\d+$"
UNIPROT_RE = (
    r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})(?:-\d+)?$"
)


def map_to_symbols(ids, table: pd.DataFrame, context=None) -> IdMapping:
    """Map ids to current symbols.

    Parameters
    ----------
    ids
        Iterable of ids (duplicates ignored).
    table
        Id table from :func:`load_id_table`.
    context
        Node names used to break ties between several candidate symbols (the graph's nodes).
        Defaults to ``ids``.

    Returns
    -------
    IdMapping
    """
    ids = pd.Index(pd.unique(pd.Index(ids).astype(str)))
    symbols = pd.Index(table["symbol"].unique())
    is_sym = ids.isin(symbols)
    query = ids[~is_sym]
    if len(query) == 0:
        return IdMapping(mapping={}, n_symbols=int(is_sym.sum()))
    # exact lookups, then lookups with version / isoform suffixes stripped
    hit = query.isin(table["id"])
    keys = pd.Series(query, index=query)
    rest = keys[~hit]
    stripped = rest.str.replace(_VERSION, r"\1", regex=True).str.replace(
        _ISOFORM, r"\1", regex=True
    )
    keys = pd.concat([keys[hit], stripped])
    pairs = pd.DataFrame({"query": keys.index, "id": keys.to_numpy()})
    cand = pairs.merge(table, on="id", how="inner").drop_duplicates(["query", "symbol"])
    n_cand = cand.groupby("query", sort=False)["symbol"].transform("size")
    single = cand[n_cand == 1]
    multi = cand[n_cand > 1]
    context = symbols.intersection(pd.Index(ids if context is None else context).astype(str))
    multi = multi[multi["symbol"].isin(context)]
    n_ctx = multi.groupby("query", sort=False)["symbol"].transform("size")
    chosen = pd.concat([single, multi[n_ctx == 1]])
    mapping = dict(zip(chosen["query"], chosen["symbol"], strict=True))
    found = set(cand["query"])
    unmapped = [q for q in query if q not in found]
    ambiguous = sorted(found - set(mapping))
    by_type = chosen["id_type"].value_counts().to_dict()
    return IdMapping(
        mapping=mapping,
        unmapped=sorted(unmapped),
        ambiguous=ambiguous,
        by_type={str(k): int(v) for k, v in by_type.items()},
        n_symbols=int(is_sym.sum()),
    )


def resolve_names(genes, nodes: pd.Index, table: pd.DataFrame | None) -> dict[str, str | None]:
    """For each query gene, the node name it is in the graph (or None).

    A gene that is a node maps to itself. Otherwise, with an id table: the query read as an id
    (alias, UniProt...) whose candidate symbols include exactly one node; or, when the graph uses
    an older name, the query's own aliases of which exactly one is a node.
    """
    genes = [str(g) for g in genes]
    out: dict[str, str | None] = {}
    node_set = pd.Index(nodes)
    for g in genes:
        out[g] = g if g in node_set else None
    todo = [g for g in genes if out[g] is None]
    if not todo or table is None:
        return out
    # query -> symbol candidates that are nodes
    fwd = map_to_symbols(todo, table, context=node_set)
    for g in todo:
        s = fwd.mapping.get(g)
        if s is not None and s in node_set:
            out[g] = s
    todo = [g for g in todo if out[g] is None]
    if todo:
        # query is (or maps to) a current symbol; the graph may use one of its aliases
        sym = {g: fwd.mapping.get(g, g) for g in todo}
        rows = table[table["symbol"].isin(set(sym.values())) & table["id"].isin(node_set)]
        cands = rows.groupby("symbol")["id"].agg(lambda s: sorted(set(s)))
        for g in todo:
            c = cands.get(sym[g], [])
            if len(c) == 1:
                out[g] = c[0]
    return out


def looks_like_uniprot(ids) -> np.ndarray:
    """Boolean mask: ids shaped like UniProt accessions."""
    return pd.Series(list(ids), dtype=object).astype(str).str.match(UNIPROT_RE).to_numpy()
