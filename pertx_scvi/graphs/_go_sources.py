"""GO sources of gene graphs: GEARS ``go.csv`` and gene -> GO annotation tables (read, gene x
term matrix, top-k Jaccard co-annotation edges). Each reader returns a canonical edge table
(see ``_loaders``) and a :class:`GraphReport`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._loaders import _read_frame, _require, make_edges, merge_duplicates
from ._report import GraphReport


# --------------------------------------------------------------------------- GEARS go.csv
def read_gears_go(path, min_weight: float = 0.0) -> tuple[pd.DataFrame, GraphReport]:
    """GEARS ``go.csv`` (``source,target,importance``): relation ``go``, weight = importance."""
    df, step = _read_frame(path, "from_gears_go", keep_default_na=False, na_values=[""])
    wcol = next((c for c in ("importance", "weight", "score") if c in df.columns), None)
    _require(df, ["source", "target"], step)
    if wcol is None:
        raise ValueError(
            f"{step}: needs an 'importance' (or 'weight') column; found {list(df.columns)}"
        )
    n = len(df)
    w = pd.to_numeric(df[wcol], errors="coerce").to_numpy(dtype=np.float64)
    keep = (
        (w > 0)
        & (w >= min_weight)
        & df["source"].notna().to_numpy()
        & df["target"].notna().to_numpy()
    )
    df = df[keep]
    edges = make_edges(df["source"], df["target"], "go", w[keep], 0, directed=False)
    edges = merge_duplicates(edges)
    rep = GraphReport(step, n_edges_read=n, n_edges_kept=len(edges))
    if n - keep.sum():
        rep.dropped["below_min_weight"] = int(n - keep.sum())
    return edges, rep


# --------------------------------------------------------------------------- GO annotations
def read_gene2go(
    path_or_df,
    ontologies: Sequence[str] | None = ("BP", "MF", "CC"),
    exclude_evidence: Sequence[str] | None = ("ND",),
) -> pd.DataFrame:
    """Gene -> GO annotations as a deduplicated DataFrame ``gene, term``.

    Accepts the ``human_gene2go.tsv.gz`` layout (``entrez, symbol, go_id, evidence, ontology,
    term``) or any table with a gene column (``symbol``/``gene``/``gene_symbol``/``gene_name``)
    and a term column (``go_id``/``go``/``term_id``). ``ontology`` and ``evidence`` filters apply
    when those columns exist. ``ND`` ("no biological data") annotations to the three root terms are
    excluded by default: they would make all unannotated genes identical.
    """
    df, step = _read_frame(path_or_df, "gene2go", dtype=str, keep_default_na=False)
    lower = {c.lower(): c for c in df.columns}
    gcol = next(
        (lower[c] for c in ("symbol", "gene", "gene_symbol", "gene_name") if c in lower), None
    )
    tcol = next((lower[c] for c in ("go_id", "go", "term_id", "go_term") if c in lower), None)
    if gcol is None or tcol is None:
        raise ValueError(
            f"{step}: needs a gene column (symbol/gene) and a GO term column (go_id); "
            f"found {list(df.columns)}"
        )
    keep = np.ones(len(df), dtype=bool)
    if ontologies is not None and "ontology" in lower:
        keep &= df[lower["ontology"]].isin(list(ontologies)).to_numpy()
    if exclude_evidence and "evidence" in lower:
        keep &= ~df[lower["evidence"]].isin(list(exclude_evidence)).to_numpy()
    out = pd.DataFrame({"gene": df[gcol].to_numpy()[keep], "term": df[tcol].to_numpy()[keep]})
    out = out[out["gene"].notna() & out["term"].notna() & (out["gene"] != "") & (out["term"] != "")]
    out = out.astype({"gene": str, "term": str})
    return out.drop_duplicates().reset_index(drop=True)


def gene_term_matrix(ann: pd.DataFrame) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """Binary genes x terms CSR matrix (float32) from a ``gene, term`` table; genes sorted."""
    gi, genes = pd.factorize(ann["gene"], sort=True)
    ti, terms = pd.factorize(ann["term"], sort=True)
    x = sp.csr_matrix(
        (np.ones(len(gi), dtype=np.float32), (gi, ti)), shape=(len(genes), len(terms))
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x, pd.Index(genes), pd.Index(terms)


def topk_jaccard(
    x: sp.csr_matrix,
    k: int,
    min_jaccard: float,
    n_jobs: int | None = None,
    dense_min_genes: int | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of a binary matrix, its ``k`` most Jaccard-similar other rows.

    Exact: row pairs are scored over all columns. Broad columns (terms annotating many genes) go
    through a small dense matrix product, the others through a sparse product, in row chunks (in
    threads). Ties at the k-th similarity are broken by column order (the sorted gene names).
    ``dense_min_genes`` (terms with more genes go to the dense product; default
    ``max(256, n_rows // 40)``) and ``chunk`` (rows per chunk) tune speed and memory only.

    Returns
    -------
    rows, cols, jaccard
        Edge arrays; only pairs with Jaccard >= ``min_jaccard`` are kept.
    """
    n_rows = x.shape[0]
    kk = min(k, n_rows - 1)
    if kk <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    size = np.asarray(x.sum(axis=1), dtype=np.float32).ravel()
    min_j = np.float32(max(min_jaccard, 1e-12))  # never keep pairs without a shared term
    n_t = np.asarray(x.sum(axis=0)).ravel()
    if dense_min_genes is None:
        dense_min_genes = max(256, n_rows // 40)
    dense_cols = n_t > dense_min_genes
    sparse_cols = ~dense_cols & (n_t > 1)  # singleton terms count in the sizes only
    xd = np.ascontiguousarray(x[:, dense_cols].toarray(), dtype=np.float32)
    xd_t = np.ascontiguousarray(xd.T)
    xs = x[:, sparse_cols].tocsr()
    xs_t = xs.T.tocsr()
    if chunk is None:
        chunk = int(max(64, min(1024, 2e7 // max(n_rows, 1))))

    def work(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stop = min(n_rows, start + chunk)
        n = stop - start
        if xd.shape[1]:
            inter = xd[start:stop] @ xd_t
        else:
            inter = np.zeros((n, n_rows), dtype=np.float32)
        prod = (xs[start:stop] @ xs_t).tocoo()
        inter[prod.row, prod.col] += prod.data.astype(np.float32)
        den = np.add.outer(size[start:stop], size)
        den -= inter
        jac = np.divide(inter, den, out=inter)
        jac[np.arange(n), np.arange(start, stop)] = -1.0
        kth = np.partition(jac, n_rows - kk, axis=1)[:, n_rows - kk]
        thr = np.maximum(kth, min_j)
        r, c = np.nonzero(jac >= thr[:, None])  # row-major: columns ascending in a row
        val = jac[r, c]
        tie = val == thr[r]
        need = kk - np.bincount(r[~tie], minlength=n)  # ties fill the places left
        rt = r[tie]
        rank = np.arange(len(rt)) - np.searchsorted(rt, rt, side="left")
        keep = ~tie
        keep[np.flatnonzero(tie)[rank < need[rt]]] = True
        return r[keep] + start, c[keep], val[keep]

    starts = range(0, n_rows, chunk)
    n_jobs = n_jobs or min(4, os.cpu_count() or 1)
    if n_jobs > 1 and len(starts) > 1:
        with ThreadPoolExecutor(n_jobs) as pool:
            parts = list(pool.map(work, starts))
    else:
        parts = [work(s) for s in starts]
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    jac = np.concatenate([p[2] for p in parts])
    order = np.lexsort((cols, -jac, rows))
    return rows[order], cols[order], jac[order]


def go_annotation_edges(
    path_or_df,
    min_jaccard: float = 0.1,
    top_k: int = 20,
    ontologies: Sequence[str] | None = ("BP", "MF", "CC"),
    max_genes_per_term: int | None = None,
    exclude_evidence: Sequence[str] | None = ("ND",),
    n_jobs: int | None = None,
) -> tuple[pd.DataFrame, GraphReport]:
    """GO co-annotation graph: for each gene its ``top_k`` genes by Jaccard of GO-term sets."""
    ann = read_gene2go(path_or_df, ontologies=ontologies, exclude_evidence=exclude_evidence)
    step = "from_go_annotations"
    if not isinstance(path_or_df, pd.DataFrame):
        step += f"({Path(path_or_df).name})"
    rep = GraphReport(step, n_edges_read=len(ann))
    if max_genes_per_term is not None:
        n_t = ann.groupby("term")["gene"].transform("size")
        broad = n_t > max_genes_per_term
        rep.dropped["broad_terms"] = int(ann.loc[broad, "term"].nunique())
        ann = ann[~broad]
    x, genes, _terms = gene_term_matrix(ann)
    rows, cols, jac = topk_jaccard(x, top_k, min_jaccard, n_jobs=n_jobs)
    edges = make_edges(genes[rows], genes[cols], "go", jac, 0, directed=False)
    rep.n_edges_kept = len(edges)
    rep.notes.append(
        f"{len(genes):,} annotated genes, {x.shape[1]:,} terms; n_edges_read counts annotations"
    )
    return edges, rep
