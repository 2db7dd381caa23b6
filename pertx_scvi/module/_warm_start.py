"""Warm start of the additive path: trained genes' observed effects, split into the shared
mean effect, the knockdown of the measured target gene and each gene's own remainder."""

from __future__ import annotations

import torch

from ._decoders import NextCellDecoder
from ._retrieval import EffectRetrieval


def link_space_effect(
    perturbed: torch.Tensor, control: torch.Tensor, likelihood: str
) -> torch.Tensor:
    """Mean effect (n_genes,) of perturbed over control cells, both given as log1p(CP10k)
    values, in the decoder's output space: for ``"mse"`` the difference of the mean values;
    for the count likelihoods, whose output is the logit of each gene's share of the counts,
    the difference of log1p(mean CP10k) (a pseudo-count of 1 per 10,000 keeps genes without
    counts at 0)."""
    if likelihood == "mse":
        return perturbed.mean(0) - control.mean(0)
    return torch.log1p(torch.expm1(perturbed).mean(0)) - torch.log1p(torch.expm1(control).mean(0))


@torch.no_grad()
def warm_start_effects(
    decoder: NextCellDecoder,
    retrieval: EffectRetrieval,
    genes: torch.Tensor,
    effects: torch.Tensor,
) -> torch.Tensor:
    """Start the additive path at the observed effects (len(genes), n_genes) of single genes.

    The decoder's ``mean_shift`` starts at their mean (the train-mean baseline), its
    ``self_effect`` at their mean own-gene knockdown beyond that (for genes that are measured),
    and each gene's effect-table row at its remainder. A trained gene's output then starts at
    its observed effect (so combinations of trained genes start at the additive baseline); an
    untrained one at the train mean, its knockdown, and the retrieved remainders of its graph
    neighbours (the graph-neighbour baseline, shrunk towards the train mean). Only a model
    that has not been trained is started (effect rows and ``mean_shift`` all zero); returns
    the mask of ``genes`` whose rows were set.
    """
    rows = retrieval.row_of[genes]
    fresh = rows >= 0
    if not fresh.any() or (retrieval.effects != 0).any() or (decoder.mean_shift != 0).any():
        return torch.zeros_like(fresh)
    genes, effects = genes[fresh], effects[fresh].to(retrieval.effects)
    mean = effects.mean(0)
    remainder = effects - mean
    own = decoder.self_gene_index[genes]
    measured = (own >= 0).nonzero().squeeze(1)
    knockdown = remainder.new_zeros(())
    if len(measured):
        knockdown = remainder[measured, own[measured]].mean()
        remainder[measured, own[measured]] -= knockdown
    decoder.mean_shift.copy_(mean)
    decoder.self_effect.copy_(knockdown)
    retrieval.effects[retrieval.row_of[genes]] = remainder
    return fresh
