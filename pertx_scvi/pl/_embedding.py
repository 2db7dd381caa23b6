"""UMAP of the PertTX cell embedding (a thin wrapper around scanpy)."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData
from matplotlib.figure import Figure

from ._utils import PathLike, finish


def umap(
    adata: AnnData,
    color: str | Sequence[str] | None = "perturbation",
    save: PathLike | None = None,
    *,
    use_rep: str = "X_pertx",
    n_neighbors: int = 15,
    recompute: bool = False,
    seed: int = 0,
    show: bool = False,
    **kwargs,
) -> Figure:
    """UMAP of a cell embedding (``adata.obsm[use_rep]``), coloured by ``obs`` columns.

    Computes the neighbour graph and the UMAP (``sc.pp.neighbors(use_rep=...)``,
    ``sc.tl.umap``) when ``adata.obsm["X_umap"]`` is absent or ``recompute`` is set, storing
    them in ``adata`` as scanpy does, then draws ``sc.pl.umap``.

    Parameters
    ----------
    adata
        Cells with the embedding in ``obsm[use_rep]``, e.g.
        ``adata.obsm["X_pertx"] = model.get_latent_representation()``.
    color
        ``obs`` column(s) or gene(s) to colour by.
    save
        Path of the image to write.
    use_rep
        ``obsm`` key of the embedding.
    n_neighbors
        Neighbours of the kNN graph.
    recompute
        Recompute neighbours and UMAP even when ``X_umap`` exists.
    seed
        Seed of the UMAP layout.
    show
        Call :func:`matplotlib.pyplot.show`.
    **kwargs
        Passed to :func:`scanpy.pl.umap`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import scanpy as sc

    if use_rep not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {use_rep!r}; set adata.obsm[{use_rep!r}] = "
            "model.get_latent_representation() first"
        )
    if recompute or "X_umap" not in adata.obsm:
        # Exact neighbours through scikit-learn: scanpy's default (pynndescent, used from 8,192
        # cells on) fails with pynndescent 0.7 on scipy's sparse arrays.
        sc.pp.neighbors(
            adata,
            use_rep=use_rep,
            n_neighbors=n_neighbors,
            random_state=seed,
            transformer="sklearn",
        )
        sc.tl.umap(adata, random_state=seed)
    fig = sc.pl.umap(adata, color=color, show=False, return_fig=True, **kwargs)
    return finish(fig, show, save)
