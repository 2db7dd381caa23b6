"""Gene tokens: a gene-identity embedding plus an encoding of the gene's expression value."""

import torch
from torch import nn


class ContinuousValueEncoder(nn.Module):
    """Maps a scalar (log-normalised expression) to a d_model vector through a small MLP."""

    def __init__(self, d_model: int, max_value: float = 10.0):
        super().__init__()
        self.max_value = max_value
        self.net = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(values.clamp(max=self.max_value).unsqueeze(-1)))


class ExpressionTokenizer(nn.Module):
    """Turns a batch of expression profiles into token sequences with a leading CLS token.

    Token ``g`` of a cell is ``gene_embedding[g] + value_encoder(x_g)``; masked positions replace
    the value part by a learned mask vector, so the identity of a hidden gene stays visible while
    its value does not (scGPT-style masked expression modelling).
    """

    def __init__(self, n_genes: int, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_encoder = ContinuousValueEncoder(d_model)
        self.mask_vector = nn.Parameter(torch.zeros(d_model))
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of shape (batch, n_genes + 1, d_model) for ``values`` of shape (batch, n_genes).

        ``mask`` (batch, n_genes), True where the value is hidden.
        """
        value_part = self.value_encoder(values)
        if mask is not None:
            value_part = torch.where(mask.unsqueeze(-1), self.mask_vector, value_part)
        tokens = value_part + self.gene_embedding.weight
        cls = self.cls.expand(values.shape[0], 1, -1)
        return self.dropout(torch.cat([cls, tokens], dim=1))
