"""Spectral gene embeddings: eigenvectors of a gene graph's normalised Laplacian."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, eigsh

from ._gene_graph import GeneGraph

logger = logging.getLogger("pertx_scvi.graphs")

# Below this many nodes the eigenvectors are computed densely (exact, and eigsh needs k < n).
_DENSE_UP_TO = 1000


def spectral_embedding(
    graph: GeneGraph,
    n_components: int = 64,
    relations: str | list[str] | None = None,
    regularization: float | None = None,
    normalize: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    """Gene vectors from the graph's Laplacian eigenmaps (a spectral embedding).

    The graph is made undirected (``A = W + W.T`` with ``W`` the summed edge weights of the
    chosen relations between two genes; self-loops dropped). The embedding of a gene is its
    entries in the eigenvectors of the ``n_components`` smallest non-trivial eigenvalues of
    the symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2``, i.e. the largest
    eigenvalues of ``D^-1/2 A D^-1/2`` with the trivial one (eigenvalue 1) dropped, computed
    with :func:`scipy.sparse.linalg.eigsh` (dense :func:`numpy.linalg.eigh` on small graphs).

    On real networks the leading eigenvectors of the plain Laplacian sit on small, loosely
    attached clusters of a few hundred genes each. ``regularization`` (``tau``) is the
    regularised spectral embedding of Qin and Rohe (2013): ``A + tau / n`` everywhere (a weak
    edge between every two genes, never materialised) and degrees ``D + tau``, which spreads the
    eigenvectors over the graph and connects it; ``tau = 0`` is the plain Laplacian, and then
    only the largest connected component is embedded (other genes get no row: their
    eigenvectors would only say which small component they are in).

    Components are ordered by eigenvalue and their signs fixed (the largest entry of each
    positive), so the result is deterministic.

    Parameters
    ----------
    graph
        The gene graph (e.g. ``GeneGraph.from_string(path, channels="combined_score")``).
    n_components
        Embedding width. When the graph has too few genes for that many eigenvectors, the
        missing columns are zeros.
    relations
        Relations of the graph to use (default: all, their weights summed per gene pair).
    regularization
        ``tau`` of the regularised Laplacian (see above); None: the mean weighted degree.
    normalize
        L2-normalise each gene's row (as Ng, Jordan and Weiss), so that dot products are
        cosines.
    random_state
        Seed of the eigensolver's starting vector.

    Returns
    -------
    pd.DataFrame
        genes (sorted; with ``regularization=0`` those of the largest connected component) x
        ``n_components`` (float32), columns ``spectral_0``, ``spectral_1``..., index named
        ``gene``.

    Raises
    ------
    ValueError
        For ``n_components < 1``, a negative ``regularization`` or a graph without edges.
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if not isinstance(graph, GeneGraph):
        raise TypeError(f"graph must be a GeneGraph, not {type(graph).__name__}")
    if regularization is not None and not regularization >= 0:
        raise ValueError(f"regularization must be >= 0 or None, got {regularization}")
    if relations is not None:
        graph = graph.select_relations(relations)
    edges = graph.edges
    genes = pd.Index(sorted(graph.genes.astype(str)), name="gene")
    source = genes.get_indexer(edges["source"].astype(str))
    target = genes.get_indexer(edges["target"].astype(str))
    weight = edges["weight"].to_numpy(dtype=np.float64)
    keep = (source != target) & (weight > 0)
    if not keep.any():
        raise ValueError("spectral_embedding: the graph has no edges between distinct genes")
    n = len(genes)
    w = sp.csr_matrix((weight[keep], (source[keep], target[keep])), shape=(n, n))
    adjacency = (w + w.T).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    tau = float(degree.mean()) if regularization is None else float(regularization)

    rows = np.arange(n)
    if tau == 0:
        _, labels = connected_components(adjacency, directed=False)
        rows = np.flatnonzero(labels == np.bincount(labels).argmax())
        if len(rows) < n:
            logger.info(
                "spectral_embedding: %d of %d genes outside the largest connected component "
                "(%d genes) get no vector",
                n - len(rows),
                n,
                len(rows),
            )
            adjacency = adjacency[rows][:, rows]
            degree = np.asarray(adjacency.sum(axis=1)).ravel()
    m = len(rows)
    inv_sqrt = 1.0 / np.sqrt(degree + tau)
    k = min(n_components + 1, m)
    if m <= _DENSE_UP_TO or k >= m - 1:
        dense = adjacency.toarray() + tau / m
        values, vectors = np.linalg.eigh(inv_sqrt[:, None] * dense * inv_sqrt[None, :])
    else:

        def matvec(x: np.ndarray) -> np.ndarray:
            y = inv_sqrt * x.ravel()
            return inv_sqrt * (adjacency @ y + tau / m * y.sum())

        operator = LinearOperator((m, m), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(random_state).uniform(0.5, 1.5, m)
        values, vectors = eigsh(operator, k=k, which="LA", v0=v0, tol=1e-8)
    order = np.argsort(-values, kind="stable")[1:k]  # the trivial eigenvector (eigenvalue 1)
    emb = vectors[:, order]
    flip = np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(emb.shape[1])])
    flip[flip == 0] = 1
    emb = emb * flip
    if normalize:
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
    if emb.shape[1] < n_components:
        emb = np.hstack([emb, np.zeros((m, n_components - emb.shape[1]))])
    columns = [f"spectral_{i}" for i in range(n_components)]
    return pd.DataFrame(
        emb.astype(np.float32), index=pd.Index(genes[rows], name="gene"), columns=columns
    )
