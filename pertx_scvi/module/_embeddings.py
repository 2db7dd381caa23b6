"""Gene tokens: a gene-identity embedding plus an encoding of the gene's expression value."""

from typing import Literal

import torch
from torch import nn

ValueEncoding = Literal["continuous", "binned"]


class ContinuousValueEncoder(nn.Module):
    """Maps a scalar (log-normalised expression) to a d_model vector through a small MLP."""

    def __init__(self, d_model: int, max_value: float = 10.0):
        super().__init__()
        self.max_value = max_value
        self.net = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(values.clamp(max=self.max_value).unsqueeze(-1)))


class BinnedValueEncoder(nn.Module):
    """scGPT-style value bins: a cell's nonzero values are ranked and cut into ``n_bins - 1``
    equal-frequency bins (bin 0 = not expressed), each bin a learned vector. Robust to depth."""

    def __init__(self, d_model: int, n_bins: int = 51):
        super().__init__()
        self.n_bins = n_bins
        self.embedding = nn.Embedding(n_bins, d_model)

    def bins(self, values: torch.Tensor) -> torch.Tensor:
        """(batch, n) bin index of every value, per-cell quantiles of the nonzero values."""
        expressed = values > 0
        # Rank of each value within its cell; zeros sort first and get bin 0.
        ranks = values.argsort(-1).argsort(-1).float()
        n_zero = (~expressed).sum(-1, keepdim=True).float()
        n_expressed = expressed.sum(-1, keepdim=True).clamp(min=1).float()
        quantile = (ranks - n_zero + 1) / n_expressed
        binned = (quantile * (self.n_bins - 1)).ceil().clamp(1, self.n_bins - 1).long()
        return torch.where(expressed, binned, 0)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.bins(values))


def select_tokens(values: torch.Tensor, max_genes: int, random: bool = True) -> torch.Tensor:
    """Gene positions (batch, max_genes) per cell: expressed genes first, then zeros.

    ``random=True`` (training): a random subset of the expressed genes when a cell expresses
    more than ``max_genes``, and random zeros to fill the rest, redrawn at every call.
    ``random=False`` (inference): the most expressed genes, and zeros in a fixed gene order
    (a hash of the gene position), so that a cell always gets the same tokens.
    """
    if random:
        priority = (values > 0).float() + torch.rand_like(values) * 0.5
    else:
        position = torch.arange(values.shape[-1], device=values.device)
        # Knuth's multiplicative hash spreads the fixed zero choice over the gene list.
        tiebreak = ((position * 2654435761) % 1000003).float() / 1000003
        scale = values.amax(-1, keepdim=True).clamp(min=1e-6)
        priority = (values > 0).float() + 0.5 * values / scale + 0.01 * tiebreak
    return priority.topk(max_genes, dim=-1, sorted=False).indices


class ExpressionTokenizer(nn.Module):
    """Turns a batch of expression profiles into token sequences with a leading CLS token.

    Token ``g`` of a cell is ``gene_embedding[g] + value_encoder(x_g)``; masked positions replace
    the value part by a learned mask vector, so the identity of a hidden gene stays visible while
    its value does not (scGPT-style masked expression modelling).
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int,
        dropout: float = 0.0,
        value_encoding: ValueEncoding = "continuous",
        n_bins: int = 51,
    ):
        super().__init__()
        if value_encoding not in ("continuous", "binned"):
            raise ValueError(f"value_encoding must be 'continuous' or 'binned': {value_encoding!r}")
        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_encoding = value_encoding
        if value_encoding == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model)
        else:
            self.value_encoder = BinnedValueEncoder(d_model, n_bins)
        self.mask_vector = nn.Parameter(torch.zeros(d_model))
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        genes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (batch, n_tokens + 1, d_model).

        ``values`` (batch, n_genes) log-normalised expression of all genes; ``genes``
        (batch, n_tokens) the gene positions to tokenise (all genes when None); ``mask``
        (batch, n_tokens) True where the value is hidden.
        """
        if self.value_encoding == "binned":
            # Bins are per-cell quantiles over all genes, before any token selection.
            value_part = self.value_encoder.embedding(self.value_encoder.bins(values))
            if genes is not None:
                value_part = value_part.gather(
                    1, genes.unsqueeze(-1).expand(-1, -1, value_part.shape[-1])
                )
        else:
            selected = values if genes is None else values.gather(1, genes)
            value_part = self.value_encoder(selected)
        if mask is not None:
            value_part = torch.where(mask.unsqueeze(-1), self.mask_vector, value_part)
        identity = self.gene_embedding.weight if genes is None else self.gene_embedding(genes)
        tokens = value_part + identity
        cls = self.cls.expand(values.shape[0], 1, -1)
        return self.dropout(torch.cat([cls, tokens], dim=1))
