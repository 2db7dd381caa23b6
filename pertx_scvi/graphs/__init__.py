"""Gene graphs (prior knowledge) and gene embedding tables.

:class:`GeneGraph` keeps a multi-relational gene graph as a pandas edge table (usable without
torch) loaded from GO co-annotations, OmniPath, TRRUST, STRING or any edge list, maps gene ids
to current symbols and converts to :class:`torch_geometric.data.Data` for the encoders.
:func:`go_embedding`, :func:`spectral_embedding` and :func:`read_gene_embedding` give per-gene
vectors for genes the graph does not reach (and for PertTX's gene tokens);
:func:`target_coverage` says which source reaches each perturbation target through trained genes.
"""

from ._coverage import target_coverage
from ._gene_graph import GeneGraph
from ._go_embedding import go_embedding, read_gene_embedding
from ._id_mapping import IdMapping, load_id_table
from ._report import GraphReport
from ._spectral import spectral_embedding

__all__ = [
    "GeneGraph",
    "GraphReport",
    "IdMapping",
    "go_embedding",
    "load_id_table",
    "read_gene_embedding",
    "spectral_embedding",
    "target_coverage",
]
