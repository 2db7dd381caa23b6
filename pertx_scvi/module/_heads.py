"""Heads on the cell embedding: cell-type / perturbation classifiers, phenotype regression, and
the predicted next-cell embedding that lets the same heads describe a perturbed cell."""

import torch
from torch import nn

from ._decoders import mlp


class EmbeddingStandardizer(nn.Module):
    """Standardises cell embeddings feature by feature, as batch normalisation without affine.

    The transformer's CLS outputs differ little between cells next to their shared offset
    (after a few epochs their spread across cells is a few thousandths, after the final
    LayerNorm), so heads that read them raw cannot learn (Adam moves weights by about the
    learning rate per step; the weights would need to grow a hundredfold): a linear probe on
    raw embeddings is at chance where one on standardised embeddings is not. The heads, the
    embedding-matching term and the contrastive / triplet terms therefore work in this
    standardised space.

    In training, :meth:`statistics` takes the mean and variance of a batch of real cell
    embeddings (with gradient, as batch normalisation does; statistics that lag a changing
    encoder made training diverge) and moves the running statistics towards them; prediction
    uses the running statistics, so it is deterministic and batch-independent.
    """

    def __init__(self, d_model: int, momentum: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def statistics(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) to standardise with: of ``z`` in training, else the running ones."""
        if not self.training or z.shape[0] < 2:
            return self.running_mean, self.running_var
        mean, var = z.mean(0), z.var(0, unbiased=False)
        with torch.no_grad():
            if bool(self.initialized):
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
            else:
                self.running_mean.copy_(mean.detach())
                self.running_var.copy_(var.detach())
                self.initialized.fill_(True)
        return mean, var

    def forward(
        self, z: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        mean, var = statistics or (self.running_mean, self.running_var)
        return (z - mean) / torch.sqrt(var + self.eps)


class ClassificationHead(nn.Module):
    """Logits over ``n_classes`` from a cell embedding (batch, d_model)."""

    def __init__(self, d_model: int, d_hidden: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.n_classes = n_classes
        self.net = mlp(d_model, d_hidden, n_classes, dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class PhenotypeHead(nn.Module):
    """Regresses ``n_phenotypes`` continuous scores from a cell embedding.

    The network works on standardised scores: ``loc`` and ``scale`` (buffers, saved with the
    model) come from the training cells, so scores of any unit weigh alike in the loss.
    :meth:`forward` returns standardised scores; :meth:`to_scores` and :meth:`standardize` move
    between the two scales.
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        n_phenotypes: int,
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_phenotypes = n_phenotypes
        self.net = mlp(d_model, d_hidden, n_phenotypes, dropout)
        loc = torch.zeros(n_phenotypes) if loc is None else torch.as_tensor(loc).float()
        scale = torch.ones(n_phenotypes) if scale is None else torch.as_tensor(scale).float()
        self.register_buffer("loc", loc.reshape(n_phenotypes))
        self.register_buffer("scale", scale.reshape(n_phenotypes).clamp(min=1e-6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def standardize(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.loc) / self.scale

    def to_scores(self, standardized: torch.Tensor) -> torch.Tensor:
        return standardized * self.scale + self.loc


class NextEmbeddingPredictor(nn.Module):
    """Predicted embedding of the perturbed cell: ``z + residual(z, perturbation embedding)``.

    The residual's last layer starts at zero, so an untrained predictor says "no change" (the
    source cell's own embedding) and the heads applied to it start from the source cell.
    """

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.residual = mlp(2 * d_model, d_hidden, d_model, dropout, zero_last=True)

    def forward(self, z: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
        return z + self.residual(torch.cat([z, perturbation], dim=-1))
