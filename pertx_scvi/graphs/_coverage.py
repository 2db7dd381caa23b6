"""Which prior source reaches each perturbation target, and through which trained genes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from ._gene_graph import GeneGraph
from ._id_mapping import IdTable

__all__ = ["target_coverage"]


def target_coverage(
    graphs: Mapping[str, GeneGraph],
    targets: Sequence[str],
    trained: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    id_table: IdTable | None = None,
) -> pd.DataFrame:
    """Coverage of perturbation targets by each prior source.

    A target never perturbed in training is predicted from prior knowledge only through the
    trained genes next to it: a graph-neighbour average (or PertTX's effect retrieval) has
    nothing to borrow for a target without trained neighbours and falls back to the shared
    train-mean effect. This table says, per target and source, whether the target is a node
    and how many trained genes are its neighbours.

    Parameters
    ----------
    graphs
        Prior sources by name, e.g. ``{"go": ..., "string": ...}``.
    targets
        Perturbation targets (gene symbols), e.g. the held-out genes of a benchmark.
    trained
        Genes perturbed in training: one collection for every target, or a mapping from each
        target to the genes trained when it was held out (k-fold: the other folds' genes).
        ``None``: every other target.
    id_table
        Id table (:func:`~pertx_scvi.graphs.load_id_table`) to resolve renamed genes
        (``MARCH8`` -> ``MARCHF8``) to graph nodes.

    Returns
    -------
    pandas.DataFrame
        One row per target and source: ``target``, ``source``, ``node`` (the target's name in
        the graph, None when absent), ``degree`` (neighbours in the whole graph),
        ``n_trained_neighbours`` and ``trained_neighbours`` (sorted, comma-separated).
    """
    targets = [str(t) for t in dict.fromkeys(targets)]
    if trained is None:
        trained_of = {t: [g for g in targets if g != t] for t in targets}
    elif isinstance(trained, Mapping):
        missing = [t for t in targets if t not in trained]
        if missing:
            raise KeyError(f"trained has no entry for the targets {missing}")
        trained_of = {t: [str(g) for g in trained[t]] for t in targets}
    else:
        common = [str(g) for g in trained]
        trained_of = {t: [g for g in common if g != t] for t in targets}

    everything = sorted({g for genes in trained_of.values() for g in genes} | set(targets))
    rows = []
    for source, graph in graphs.items():
        node_of = graph.resolve(everything, id_table)
        gene_of = {node: gene for gene, node in node_of.items() if node is not None}
        for target in targets:
            node = node_of[target]
            neighbours = set(graph.neighbors(node)) if node is not None else set()
            trained_nodes = {node_of[g] for g in trained_of[target]} - {None}
            hits = sorted(gene_of[n] for n in neighbours & trained_nodes)
            rows.append(
                {
                    "target": target,
                    "source": source,
                    "node": node,
                    "degree": len(neighbours),
                    "n_trained_neighbours": len(hits),
                    "trained_neighbours": ",".join(hits),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "target",
            "source",
            "node",
            "degree",
            "n_trained_neighbours",
            "trained_neighbours",
        ],
    )
