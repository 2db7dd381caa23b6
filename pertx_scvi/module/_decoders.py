"""Decoders from cell embeddings (and perturbation embeddings) to expression of every gene."""

import torch
from torch import nn


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0, zero_last: bool = False):
    """Two-layer GELU perceptron; ``zero_last`` starts its output at exactly zero."""
    net = nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
    )
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class NextCellDecoder(nn.Module):
    """Predicts the perturbed cell from its control source cell and the perturbation.

    Output (in the likelihood's link space: NB logits or log-normalised values) is

    ``control(z) + sum over member genes g of [mean_shift + effect(z, e_g) + self_g]
    + [2+ genes] interaction(z, pooled)``

    - ``control(z)``: the source cell's state;
    - ``mean_shift``: the average effect of a perturbed gene (the train-mean baseline);
    - ``effect(z, e_g)``: the gene-specific residual, initialised at zero so that training
      starts from the train-mean baseline and leaves it only where the data says so;
    - ``self_g``: a knockout lowers its own target gene when that gene is measured;
    - ``interaction``: zero at initialisation, so an unseen combination starts as the sum of
      its genes' effects (the additive baseline) and learns a correction from trained ones.
      In training the whole term is dropped for a share ``interaction_dropout`` of the
      combination cells (and scaled by ``1 / (1 - interaction_dropout)`` for the others). On a
      squared error this adds ``p / (1 - p) * interaction**2`` to the loss: a ridge penalty
      that keeps the additive path in charge of what it can explain and shrinks the
      correction, which is otherwise learned from few combinations and extrapolates badly to
      unseen ones (measured in ``tests/test_graph_encoder.py``).
    """

    def __init__(
        self,
        d_model: int,
        n_genes: int,
        d_hidden: int,
        self_gene_index: torch.Tensor,
        dropout: float = 0.0,
        interaction_dropout: float = 0.5,
    ):
        super().__init__()
        if not 0.0 <= interaction_dropout < 1.0:
            raise ValueError(f"interaction_dropout must be in [0, 1), got {interaction_dropout}")
        self.interaction_dropout = interaction_dropout
        self.control = mlp(d_model, d_hidden, n_genes, dropout)
        self.mean_shift = nn.Parameter(torch.zeros(n_genes))
        self.effect = mlp(2 * d_model, d_hidden, n_genes, dropout, zero_last=True)
        self.interaction = mlp(2 * d_model, d_hidden, n_genes, dropout, zero_last=True)
        self.self_effect = nn.Parameter(torch.zeros(()))
        # Position of each perturbation gene among the measured genes, -1 when not measured.
        self.register_buffer("self_gene_index", self_gene_index.long())

    def self_term(self, gene_sets: torch.Tensor, n_genes: int) -> torch.Tensor:
        """(batch, n_genes) tensor holding ``self_effect`` at each measured perturbed gene."""
        measured = self.self_gene_index[gene_sets.clamp(min=0)]
        measured = torch.where(gene_sets >= 0, measured, -1)
        hit = (measured >= 0).float() * self.self_effect
        out = torch.zeros(gene_sets.shape[0], n_genes + 1, device=gene_sets.device)
        # Column n_genes collects the padding and unmeasured genes, then is dropped.
        out.scatter_add_(1, torch.where(measured >= 0, measured, n_genes), hit)
        return out[:, :n_genes]

    def forward(
        self,
        z: torch.Tensor,
        members: torch.Tensor,
        pooled: torch.Tensor,
        gene_sets: torch.Tensor,
        residual_members: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder output for sources ``z`` (B, d), member-gene embeddings (B, K, d), set
        embeddings ``pooled`` (B, d) and the padded gene sets (B, K); ``residual_members``
        (B, K) bool: the members that get the gene-specific ``effect`` (default: all)."""
        out = self.control(z)
        valid = gene_sets >= 0
        if not valid.any():
            return out
        n_members = valid.sum(1, keepdim=True).float()
        # Gene-specific residuals only for real members (padding contributes nothing).
        with_residual = valid if residual_members is None else valid & residual_members
        rows, slots = with_residual.nonzero(as_tuple=True)
        residual = torch.zeros_like(out).index_add_(
            0, rows, self.effect(torch.cat([z[rows], members[rows, slots]], dim=-1))
        )
        out = out + n_members * self.mean_shift + residual + self.self_term(gene_sets, out.shape[1])
        is_combination = (n_members > 1).float()
        if self.training and self.interaction_dropout > 0:
            keep = torch.rand_like(is_combination) >= self.interaction_dropout
            is_combination = is_combination * keep / (1.0 - self.interaction_dropout)
        return out + is_combination * self.interaction(torch.cat([z, pooled], dim=-1))
