"""Torch modules of PertTX (no AnnData in here)."""

from ._graph_encoder import (
    GraphPerturbationEncoder,
    GraphTensors,
    MultiViewPerturbationEncoder,
    RelationalConv,
    RelationalGNN,
    RGCNPerturbationEncoder,
    ViewAttention,
)
from ._module import PertTXModule
from ._pert_encoder import GeneEmbeddingPerturbationEncoder, PerturbationEncoder
from ._retrieval import EffectRetrieval
from ._transformer import TransformerEncoder, flash_attn_available, resolve_backend
from ._warm_start import link_space_effect, warm_start_effects

__all__ = [
    "EffectRetrieval",
    "GeneEmbeddingPerturbationEncoder",
    "GraphPerturbationEncoder",
    "GraphTensors",
    "MultiViewPerturbationEncoder",
    "RGCNPerturbationEncoder",
    "RelationalConv",
    "RelationalGNN",
    "ViewAttention",
    "PertTXModule",
    "PerturbationEncoder",
    "TransformerEncoder",
    "flash_attn_available",
    "link_space_effect",
    "warm_start_effects",
    "resolve_backend",
]
