"""Torch modules of PertTX (no AnnData in here)."""

from ._module import PertTXModule
from ._pert_encoder import GeneEmbeddingPerturbationEncoder, PerturbationEncoder
from ._transformer import TransformerEncoder, flash_attn_available, resolve_backend

__all__ = [
    "GeneEmbeddingPerturbationEncoder",
    "PertTXModule",
    "PerturbationEncoder",
    "TransformerEncoder",
    "flash_attn_available",
    "resolve_backend",
]
