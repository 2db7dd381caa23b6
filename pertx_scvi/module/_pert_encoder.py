"""Perturbation encoders: a perturbation is a set of genes, embedded gene by gene then pooled.

Subclasses only say how to embed single genes (:meth:`PerturbationEncoder.embed_genes`) and
which genes they can embed (:meth:`PerturbationEncoder.can_embed`); pooling over the members
of a combination of any size, with a learned interaction term, is shared. An encoder with a
training loss of its own returns what that loss needs with the embeddings
(:meth:`PerturbationEncoder.embed_genes_for_loss`), and the model hands it back to
:meth:`PerturbationEncoder.regularization_loss`: no state is kept between the two calls.
"""

from typing import Any

import torch
from torch import nn


class PerturbationEncoder(nn.Module):
    """Base class: embeds padded gene sets of shape (batch, max_set_size), ``-1`` = padding.

    The embedding of a set is the sum of its genes' embeddings plus an interaction term computed
    from that sum, applied only to sets of two or more genes. The interaction starts at zero so an
    untrained model predicts combinations additively. The empty set (control) embeds to zero.
    """

    def __init__(self, n_genes: int, d_model: int):
        super().__init__()
        # Genes named by a training label; saved with the model so predictions can refuse or
        # flag genes that were never perturbed.
        self.register_buffer("trained_genes", torch.zeros(n_genes, dtype=torch.bool))
        self.n_genes = n_genes
        self.d_model = d_model
        self.interaction = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        nn.init.zeros_(self.interaction[-1].weight)
        nn.init.zeros_(self.interaction[-1].bias)

    def embed_genes(self, genes: torch.Tensor) -> torch.Tensor:
        """Embeddings (len(genes), d_model) of vocabulary positions ``genes``."""
        raise NotImplementedError

    def can_embed(self) -> torch.Tensor:
        """Boolean mask over the vocabulary: genes this encoder gives a meaningful embedding."""
        return self.trained_genes

    def embed_genes_for_loss(
        self, genes: torch.Tensor, left_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        """:meth:`embed_genes` and the inputs of :meth:`regularization_loss` that come with
        these embeddings (None here: no regulariser). ``left_out`` (a boolean mask over the
        vocabulary) names trained genes to embed as if never perturbed; ignored here."""
        return self.embed_genes(genes), None

    def regularization_loss(self, inputs: Any) -> torch.Tensor | None:
        """Optional extra training loss of the encoder (e.g. graph link prediction) from the
        ``inputs`` returned with a step's embeddings (:meth:`member_vectors`); None here."""
        return None

    def member_vectors(
        self, gene_sets: torch.Tensor, left_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Embeddings (batch, max_set_size, d_model) of each member gene, zero at padding, and
        the inputs of :meth:`regularization_loss` that come with them (None without members).
        ``left_out``: see :meth:`embed_genes_for_loss`."""
        valid = gene_sets >= 0
        out = torch.zeros(*gene_sets.shape, self.d_model, device=gene_sets.device)
        inputs = None
        if valid.any():
            # Embed each distinct gene of the batch once, whatever the number of cells naming it.
            genes, inverse = torch.unique(gene_sets[valid], return_inverse=True)
            vectors, inputs = self.embed_genes_for_loss(genes, left_out)
            out[valid] = vectors[inverse]
        return out, inputs

    def pool(self, members: torch.Tensor, gene_sets: torch.Tensor) -> torch.Tensor:
        """Set embedding: sum of members plus the interaction term for sets of 2+ genes."""
        total = members.sum(1)
        is_combination = ((gene_sets >= 0).sum(1) > 1).unsqueeze(-1)
        return total + is_combination * self.interaction(total)

    def forward(self, gene_sets: torch.Tensor) -> torch.Tensor:
        return self.pool(self.member_vectors(gene_sets)[0], gene_sets)


class GeneEmbeddingPerturbationEncoder(PerturbationEncoder):
    """A free embedding per perturbed gene; only genes perturbed in training can be embedded.

    The model refuses to predict other genes rather than return an untrained vector.
    """

    def __init__(self, n_genes: int, d_model: int):
        super().__init__(n_genes, d_model)
        self.embedding = nn.Embedding(n_genes, d_model)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def embed_genes(self, genes: torch.Tensor) -> torch.Tensor:
        return self.embedding(genes)
