"""PertTX module: torch only, no AnnData."""

from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from pertx_scvi._constants import BATCH_KEYS

from ._decoders import NextCellDecoder
from ._embeddings import ExpressionTokenizer
from ._losses import log_normalize, negative_binomial_loss, squared_error_loss
from ._pert_encoder import GeneEmbeddingPerturbationEncoder, PerturbationEncoder
from ._transformer import AttentionBackend, TransformerEncoder

Likelihood = Literal["nb", "mse"]
TARGET_SUM = 1e4


class PertTXModule(BaseModuleClass):
    """Transformer over gene tokens that predicts a perturbed cell from a control cell.

    Parameters
    ----------
    n_genes
        Number of measured genes (tokens per cell).
    n_perturbation_genes
        Size of the perturbation-gene vocabulary.
    self_gene_index
        (n_perturbation_genes,) position of each perturbation gene among the measured genes,
        ``-1`` when it is not measured.
    perturbation_encoder
        Embeds gene sets; defaults to one free embedding per perturbed gene.
    d_model, n_heads, n_layers, d_hidden, dropout
        Transformer size.
    attention_backend
        ``"auto"``, ``"native"``, ``"sdpa"`` or ``"flash"``.
    likelihood
        ``"nb"``: negative binomial on counts with the observed library size;
        ``"mse"``: squared error on log1p(normalize_total) values.
    mask_ratio
        Fraction of the target cell's genes hidden for masked-expression reconstruction.
    next_cell_weight, mlm_weight
        Weights of the next-cell and masked-expression terms.
    """

    def __init__(
        self,
        n_genes: int,
        n_perturbation_genes: int,
        self_gene_index: torch.Tensor,
        perturbation_encoder: PerturbationEncoder | None = None,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_hidden: int = 128,
        dropout: float = 0.1,
        attention_backend: AttentionBackend = "auto",
        likelihood: Likelihood = "nb",
        mask_ratio: float = 0.15,
        next_cell_weight: float = 1.0,
        mlm_weight: float = 1.0,
    ):
        super().__init__()
        if likelihood not in ("nb", "mse"):
            raise ValueError(f"likelihood must be 'nb' or 'mse', got {likelihood!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.n_genes = n_genes
        self.likelihood = likelihood
        self.mask_ratio = mask_ratio
        self.loss_weights = {"next_cell": next_cell_weight, "mlm": mlm_weight}

        self.tokenizer = ExpressionTokenizer(n_genes, d_model, dropout)
        self.encoder = TransformerEncoder(
            d_model, n_heads, n_layers, d_hidden, dropout, attention_backend
        )
        self.mlm_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        self.perturbation_encoder = perturbation_encoder or GeneEmbeddingPerturbationEncoder(
            n_perturbation_genes, d_model
        )
        self.decoder = NextCellDecoder(d_model, n_genes, d_hidden, self_gene_index, dropout)
        # Per-gene NB inverse dispersion, as scVI's dispersion="gene".
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    # ---- building blocks --------------------------------------------------------------------
    def _encode(self, values: torch.Tensor, mask: torch.Tensor | None = None):
        hidden = self.encoder(self.tokenizer(values, mask))
        return hidden[:, 0], hidden[:, 1:]

    @auto_move_data
    def embed_cells(self, counts: torch.Tensor) -> torch.Tensor:
        """CLS embeddings (batch, d_model) of unmasked cells."""
        library = counts.sum(-1, keepdim=True).clamp(min=1.0)
        return self._encode(log_normalize(counts, library, TARGET_SUM))[0]

    def decode(self, z: torch.Tensor, gene_sets: torch.Tensor) -> torch.Tensor:
        """Link-space output of the next-cell decoder for sources ``z`` and perturbations."""
        members = self.perturbation_encoder.member_vectors(gene_sets)
        pooled = self.perturbation_encoder.pool(members, gene_sets)
        return self.decoder(z, members, pooled, gene_sets)

    def expression_from_output(self, output: torch.Tensor) -> torch.Tensor:
        """Predicted mean expression, log1p(normalize_total 1e4), from decoder output."""
        if self.likelihood == "nb":
            return torch.log1p(output.softmax(-1) * TARGET_SUM)
        return output.clamp(min=0.0)

    def sample_counts(
        self, output: torch.Tensor, library: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Counts drawn from the likelihood for cells of total ``library`` (batch, 1)."""
        if self.likelihood == "nb":
            mean = output.softmax(-1) * library
            theta = self.log_theta.exp()
            rate = torch._standard_gamma(theta.expand_as(mean).contiguous(), generator=generator)
            rate = rate * mean / theta
        else:
            rate = torch.expm1(output.clamp(min=0.0)) * library / TARGET_SUM
        return torch.poisson(rate, generator=generator)

    # ---- scvi-tools module protocol ---------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs):
        return {
            "source_x": tensors[BATCH_KEYS.SOURCE_X],
            "target_x": tensors[BATCH_KEYS.TARGET_X],
        }

    @auto_move_data
    def inference(self, source_x: torch.Tensor, target_x: torch.Tensor) -> dict[str, torch.Tensor]:
        source_library = source_x.sum(-1, keepdim=True).clamp(min=1.0)
        target_library = target_x.sum(-1, keepdim=True).clamp(min=1.0)
        source_values = log_normalize(source_x, source_library, TARGET_SUM)
        target_values = log_normalize(target_x, target_library, TARGET_SUM)
        outputs = {"target_library": target_library, "target_values": target_values}
        if self.loss_weights["mlm"] > 0 and self.mask_ratio > 0:
            # Source and target cells go through the encoder as one batch of 2B sequences.
            mask = torch.rand_like(target_values) < self.mask_ratio
            no_mask = torch.zeros_like(mask)
            z, tokens = self._encode(
                torch.cat([source_values, target_values]), torch.cat([no_mask, mask])
            )
            batch = source_x.shape[0]
            outputs.update(
                z=z[:batch],
                target_z=z[batch:],
                mlm_prediction=self.mlm_head(tokens[batch:]).squeeze(-1),
                mlm_mask=mask,
            )
        else:
            outputs["z"] = self._encode(source_values)[0]
        return outputs

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {
            "z": inference_outputs["z"],
            "gene_sets": tensors[BATCH_KEYS.PERTURBATION_GENES].long(),
        }

    @auto_move_data
    def generative(self, z: torch.Tensor, gene_sets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"output": self.decode(z, gene_sets)}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        output = generative_outputs["output"]
        target_x = tensors[BATCH_KEYS.TARGET_X]
        if self.likelihood == "nb":
            mean = output.softmax(-1) * inference_outputs["target_library"]
            next_cell = negative_binomial_loss(target_x, mean, self.log_theta.exp())
        else:
            next_cell = squared_error_loss(output, inference_outputs["target_values"])
        terms = {"next_cell": next_cell}
        if "mlm_prediction" in inference_outputs:
            terms["mlm"] = squared_error_loss(
                inference_outputs["mlm_prediction"],
                inference_outputs["target_values"],
                inference_outputs["mlm_mask"],
            )
        weighted = {name: self.loss_weights[name] * value for name, value in terms.items()}
        regularization = self.perturbation_encoder.regularization_loss()
        if regularization is not None:
            # A per-batch scalar, spread over cells so LossOutput keeps one value per cell.
            weighted["graph"] = regularization.expand(next_cell.shape[0])
        total = sum(value.mean() for value in weighted.values())
        return LossOutput(loss=total, reconstruction_loss=weighted)

    def sample(self, *args, **kwargs):
        raise NotImplementedError("use PertTX.predict_perturbation to sample perturbed cells")
