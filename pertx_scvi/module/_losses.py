"""Per-cell loss terms; each returns a (batch,) tensor averaged over genes."""

import torch
from scvi.distributions import NegativeBinomial


def log_normalize(counts: torch.Tensor, library: torch.Tensor, target_sum: float = 1e4):
    """log1p(normalize_total(counts, target_sum)) with ``library`` the per-cell totals (batch, 1)."""
    return torch.log1p(counts / library * target_sum)


def negative_binomial_loss(
    counts: torch.Tensor, mean: torch.Tensor, inverse_dispersion: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under NB(mean, theta), averaged over genes."""
    return -NegativeBinomial(mu=mean, theta=inverse_dispersion).log_prob(counts).mean(-1)


def squared_error_loss(
    predicted: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per cell, over the genes where ``mask`` is True (all when None)."""
    error = (predicted - observed) ** 2
    if mask is None:
        return error.mean(-1)
    mask = mask.float()
    return (error * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
