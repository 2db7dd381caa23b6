"""Per-cell loss terms; each returns a (batch,) tensor (averaged over genes where relevant)."""

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from pertx_scvi._constants import TARGET_SUM


def log_normalize(counts: torch.Tensor, library: torch.Tensor, target_sum: float = TARGET_SUM):
    """log1p(normalize_total(counts, target_sum)) with ``library`` the per-cell totals (batch, 1)."""
    return torch.log1p(counts / library * target_sum)


def negative_binomial_loss(
    counts: torch.Tensor, mean: torch.Tensor, inverse_dispersion: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under NB(mean, theta), averaged over genes."""
    return -NegativeBinomial(mu=mean, theta=inverse_dispersion).log_prob(counts).mean(-1)


def zero_inflated_negative_binomial_loss(
    counts: torch.Tensor,
    mean: torch.Tensor,
    inverse_dispersion: torch.Tensor,
    dropout_logits: torch.Tensor,
) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under ZINB(mean, theta, dropout), averaged over genes.

    ``dropout_logits`` (batch, genes) are the logits of the probability of an extra zero.
    """
    distribution = ZeroInflatedNegativeBinomial(
        mu=mean, theta=inverse_dispersion.expand_as(mean), zi_logits=dropout_logits
    )
    return -distribution.log_prob(counts).mean(-1)


def squared_error_loss(
    predicted: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per cell, over the genes where ``mask`` is True (all when None)."""
    error = (predicted - observed) ** 2
    if mask is None:
        return error.mean(-1)
    mask = mask.float()
    return (error * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per cell; cells with a negative (unknown) label contribute zero."""
    labels = labels.long().reshape(-1)
    known = labels >= 0
    loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return torch.where(known, loss, torch.zeros_like(loss))


def regression_loss(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Squared error per cell averaged over the finite entries of ``observed`` (NaN = missing)."""
    return squared_error_loss(predicted, torch.nan_to_num(observed), torch.isfinite(observed))


def _label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) pair masks over a batch; a cell is never its own positive.

    Cells with a negative (unknown) label are in no pair.
    """
    labels = labels.long().reshape(-1)
    known = labels >= 0
    same = labels[:, None] == labels[None, :]
    both = known[:, None] & known[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & both & ~eye, ~same & both


def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) per anchor cell.

    Embeddings are L2-normalised; for each anchor, the mean over its positives (same label) of
    ``-log softmax(cosine / temperature)`` over all other cells of the batch. Anchors without a
    positive in the batch contribute zero.
    """
    z = F.normalize(embeddings, dim=-1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    # A large finite value (not -inf) keeps a batch of one cell free of NaN gradients.
    logits = logits.masked_fill(eye, -1e4)
    log_prob = logits.log_softmax(-1).masked_fill(eye, 0.0)
    positive, _ = _label_masks(labels)
    n_positive = positive.sum(-1)
    loss = -(log_prob * positive).sum(-1) / n_positive.clamp(min=1)
    return torch.where(n_positive > 0, loss, torch.zeros_like(loss))


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) per anchor cell on L2-normalised embeddings.

    ``max(0, d(anchor, hardest positive) - d(anchor, hardest negative) + margin)`` with
    Euclidean distances; anchors lacking a positive or a negative in the batch contribute zero.
    """
    z = F.normalize(embeddings, dim=-1)
    # Distances from cosine similarity (stable gradient at zero distance, unlike torch.cdist).
    distance = (2.0 - 2.0 * (z @ z.T)).clamp(min=1e-12).sqrt()
    positive, negative = _label_masks(labels)
    hardest_positive = distance.masked_fill(~positive, 0.0).max(-1).values
    hardest_negative = distance.masked_fill(~negative, float("inf")).min(-1).values
    valid = positive.any(-1) & negative.any(-1)
    loss = F.relu(hardest_positive - hardest_negative.clamp(max=4.0) + margin)
    return torch.where(valid, loss, torch.zeros_like(loss))
