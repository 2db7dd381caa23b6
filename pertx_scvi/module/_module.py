"""PertTX module: torch only, no AnnData."""

from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from pertx_scvi._constants import BATCH_KEYS, TARGET_SUM

from ._decoders import NextCellDecoder, mlp
from ._embeddings import ExpressionTokenizer, ValueEncoding, select_tokens
from ._expected import exact_expected_log_normalized, sampled_expected_log_normalized
from ._graph_encoder import GraphTensors
from ._heads import (
    ClassificationHead,
    EmbeddingStandardizer,
    NextEmbeddingPredictor,
    PhenotypeHead,
)
from ._losses import (
    classification_loss,
    log_normalize,
    negative_binomial_loss,
    regression_loss,
    squared_error_loss,
    supervised_contrastive_loss,
    triplet_loss,
    zero_inflated_negative_binomial_loss,
)
from ._pert_encoder import GeneEmbeddingPerturbationEncoder, PerturbationEncoder
from ._retrieval import EffectRetrieval
from ._transformer import AttentionBackend, TransformerEncoder

Likelihood = Literal["nb", "zinb", "mse"]
ContrastiveLabels = Literal["perturbation", "cell_type"]
MaskedCell = Literal["source", "target"]
XEstimator = Literal["monte_carlo", "exact"]
# Loss terms computed from cell embeddings (besides next_cell and mlm).
HEAD_TERMS = (
    "cell_type",
    "next_cell_type",
    "perturbation",
    "phenotype",
    "next_phenotype",
    "next_embedding",
    "contrastive",
    "triplet",
)
# Initial dropout logit of the zero-inflation head: about 5 % extra zeros, close to plain NB.
INITIAL_DROPOUT_LOGIT = -3.0


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
        Transformer size and dropout. Dropout is 0 by default (dropout masks over every
        token are costly on CPU).
    attention_backend
        ``"auto"``, ``"native"``, ``"sdpa"`` or ``"flash"``.
    likelihood
        ``"nb"``: negative binomial on counts with the observed library size;
        ``"zinb"``: zero-inflated negative binomial, with per-gene-per-cell dropout logits from
        the decoder input (source embedding and perturbation embedding);
        ``"mse"``: squared error on log1p(normalize_total) values.
    log_normalized_input
        Inputs are log-normalised values (``log1p`` of ``normalize_total``), not counts: they
        are tokenised as they are (needs ``likelihood="mse"``).
    mask_ratio
        Fraction of a cell's gene tokens hidden for masked-expression reconstruction.
    mlm_cell
        Which cell of a pair is masked: ``"source"`` (one encoder pass per pair: the masked
        control cell also gives the embedding the next cell is decoded from) or ``"target"``
        (the perturbed cell is masked and encoded besides the unmasked source: twice the
        encoder cost).
    max_genes
        Gene tokens per cell (expressed genes first, then zeros; random during training,
        fixed at inference, see :func:`~pertx_scvi.module.select_tokens`). ``None``: every
        gene. Decoders still predict every gene.
    value_encoding
        ``"continuous"`` (an MLP of the log-normalised value) or ``"binned"`` (scGPT-style
        per-cell quantile bins).
    next_cell_weight, mlm_weight
        Weights of the next-cell and masked-expression terms.
    reconstruction_weight
        Weight of the source cell's own expression (every gene, same likelihood) decoded from
        its embedding (scGPT's MVC). Without it nothing asks the embedding to tell cells of a
        context apart (next-cell targets are other cells) and it collapses.
    n_cell_types
        Number of cell-type classes; below 2 there is no cell-type head.
    n_perturbation_labels
        Number of perturbation label codes (classes of the perturbation head).
    n_phenotypes
        Number of phenotype scores; 0 means no phenotype head.
    phenotype_loc, phenotype_scale
        (n_phenotypes,) centre and spread of the scores; the head regresses standardised scores.
    cell_type_weight
        Cell-type classification of the target and source cell embeddings.
    next_cell_type_weight
        Cell-type classification of the predicted next-cell embedding.
    perturbation_weight
        Perturbation-label classification of the target cell embedding.
    phenotype_weight
        Phenotype regression from the target and source cell embeddings.
    next_phenotype_weight
        Phenotype regression of the predicted next cell (source embedding + perturbation).
    next_embedding_weight
        Squared error between the predicted next-cell embedding and the (detached) target cell
        embedding. The predictor exists only when a next-cell head uses it.
    contrastive_weight, contrastive_temperature
        Supervised contrastive term on target cell embeddings and its temperature.
    triplet_weight, triplet_margin
        Batch-hard triplet term on target cell embeddings and its margin.
    contrastive_labels
        Labels of the contrastive and triplet terms: ``"perturbation"`` codes or ``"cell_type"``.
    effect_genes
        Vocabulary positions of the genes labels name: each gets a direct effect vector
        (:class:`EffectRetrieval`); ``None``: no such term.
    retrieval_graphs, retrieval_leave_out
        Prior graph views over the perturbation genes through which untrained genes borrow
        effects (``None``: none) and the leave-out probability.
    effect_network
        Members that get the decoder's gene-specific network residual: ``"all"``, or
        ``"retrieved"`` (those whose effect is retrieved, never trained or left out in the
        step: the network is then the unseen-gene path only, and a trained gene's effect is
        its table row).
    effect_lr_scale
        Learning rate of the per-gene effects (effect table, ``mean_shift``, ``self_effect``)
        relative to the rest (:meth:`optimizer_groups`), without weight decay.
    gene_token_table, gene_token_found
        (n_genes, d_model) pretrained gene-token vectors and the (n_genes,) mask of the genes
        that have one: those token rows start from the table and stay frozen until
        ``tokenizer.gene_embedding.unfreeze()`` (a ``GeneHybridEmbedding``); ``None``: every
        gene token learned.

    Notes
    -----
    A weight of 0 removes its term from the loss and skips its computation; a head no term uses
    is not built.
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
        dropout: float = 0.0,
        attention_backend: AttentionBackend = "auto",
        likelihood: Likelihood = "nb",
        mask_ratio: float = 0.15,
        mlm_cell: MaskedCell = "source",
        max_genes: int | None = None,
        value_encoding: ValueEncoding = "continuous",
        next_cell_weight: float = 1.0,
        mlm_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        n_cell_types: int = 0,
        n_perturbation_labels: int = 0,
        n_phenotypes: int = 0,
        phenotype_loc: torch.Tensor | None = None,
        phenotype_scale: torch.Tensor | None = None,
        cell_type_weight: float = 1.0,
        next_cell_type_weight: float = 1.0,
        perturbation_weight: float = 0.0,
        phenotype_weight: float = 1.0,
        next_phenotype_weight: float = 1.0,
        next_embedding_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        triplet_weight: float = 0.0,
        contrastive_labels: ContrastiveLabels = "perturbation",
        contrastive_temperature: float = 0.1,
        triplet_margin: float = 0.2,
        effect_genes: torch.Tensor | None = None,
        retrieval_graphs: list[GraphTensors] | None = None,
        retrieval_leave_out: float = 0.5,
        effect_network: str = "all",
        effect_lr_scale: float = 1.0,
        log_normalized_input: bool = False,
        gene_token_table: torch.Tensor | None = None,
        gene_token_found: torch.Tensor | None = None,
    ):
        super().__init__()
        if effect_network not in ("all", "retrieved"):
            raise ValueError(f"effect_network must be 'all' or 'retrieved', got {effect_network!r}")
        self.effect_network = effect_network
        if effect_lr_scale < 0:
            raise ValueError(f"effect_lr_scale must be >= 0, got {effect_lr_scale}")
        self.effect_lr_scale = float(effect_lr_scale)
        if likelihood not in ("nb", "zinb", "mse"):
            raise ValueError(f"likelihood must be 'nb', 'zinb' or 'mse', got {likelihood!r}")
        if log_normalized_input and likelihood != "mse":
            raise ValueError(
                f"log-normalised inputs have no counts for likelihood {likelihood!r}: use 'mse'"
            )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if mlm_cell not in ("source", "target"):
            raise ValueError(f"mlm_cell must be 'source' or 'target', got {mlm_cell!r}")
        if max_genes is not None and max_genes < 1:
            raise ValueError(f"max_genes must be a positive number of genes or None: {max_genes}")
        weights = {
            "next_cell": next_cell_weight,
            "mlm": mlm_weight,
            "reconstruction": reconstruction_weight,
            "cell_type": cell_type_weight,
            "next_cell_type": next_cell_type_weight,
            "perturbation": perturbation_weight,
            "phenotype": phenotype_weight,
            "next_phenotype": next_phenotype_weight,
            "next_embedding": next_embedding_weight,
            "contrastive": contrastive_weight,
            "triplet": triplet_weight,
        }
        negative = {name: w for name, w in weights.items() if not w >= 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if contrastive_labels not in ("perturbation", "cell_type"):
            raise ValueError(
                f"contrastive_labels must be 'perturbation' or 'cell_type', got "
                f"{contrastive_labels!r}"
            )
        if contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {contrastive_temperature}")
        uses_labels = contrastive_weight > 0 or triplet_weight > 0
        if uses_labels and contrastive_labels == "cell_type" and n_cell_types < 2:
            raise ValueError(
                "contrastive_labels='cell_type' needs at least two cell types: register "
                "cell_type_key in setup_anndata, or use contrastive_labels='perturbation'"
            )
        self.n_genes = n_genes
        self.likelihood = likelihood
        self.log_normalized_input = log_normalized_input
        self.mask_ratio = mask_ratio
        self.mlm_cell = mlm_cell
        self.max_genes = None if max_genes is None or max_genes >= n_genes else int(max_genes)
        self.loss_weights = weights
        self.contrastive_labels = contrastive_labels
        self.contrastive_temperature = contrastive_temperature
        self.triplet_margin = triplet_margin

        tables = {"gene_table": gene_token_table, "table_found": gene_token_found}
        self.tokenizer = ExpressionTokenizer(n_genes, d_model, dropout, value_encoding, **tables)
        self.encoder = TransformerEncoder(
            d_model, n_heads, n_layers, d_hidden, dropout, attention_backend
        )
        self.mlm_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        self.perturbation_encoder = perturbation_encoder or GeneEmbeddingPerturbationEncoder(
            n_perturbation_genes, d_model
        )
        self.decoder = NextCellDecoder(d_model, n_genes, d_hidden, self_gene_index, dropout)
        self.retrieval = None
        if effect_genes is not None:
            self.retrieval = EffectRetrieval(
                n_perturbation_genes,
                n_genes,
                effect_genes,
                retrieval_graphs or [],
                self.perturbation_encoder,
                retrieval_leave_out,
            )
        self.reconstruction_head = None
        if reconstruction_weight > 0:
            self.reconstruction_head = mlp(d_model, d_hidden, n_genes, dropout)
        # Per-gene NB inverse dispersion, as scVI's dispersion="gene".
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.dropout_head = None
        if likelihood == "zinb":
            # Zero-inflation logits per gene and cell from the decoder input (z, perturbation).
            self.dropout_head = mlp(2 * d_model, d_hidden, n_genes, dropout)
            nn.init.constant_(self.dropout_head[-1].bias, INITIAL_DROPOUT_LOGIT)

        # ---- heads on the cell embedding (built only when a term with weight > 0 uses them) --
        self.cell_type_head = None
        if n_cell_types >= 2 and (cell_type_weight > 0 or next_cell_type_weight > 0):
            self.cell_type_head = ClassificationHead(d_model, d_hidden, n_cell_types, dropout)
        self.perturbation_head = None
        if n_perturbation_labels >= 2 and perturbation_weight > 0:
            self.perturbation_head = ClassificationHead(
                d_model, d_hidden, n_perturbation_labels, dropout
            )
        self.phenotype_head = None
        if n_phenotypes >= 1 and (phenotype_weight > 0 or next_phenotype_weight > 0):
            self.phenotype_head = PhenotypeHead(
                d_model, d_hidden, n_phenotypes, phenotype_loc, phenotype_scale, dropout
            )
        self.next_embedding = None
        if (self.cell_type_head is not None and next_cell_type_weight > 0) or (
            self.phenotype_head is not None and next_phenotype_weight > 0
        ):
            self.next_embedding = NextEmbeddingPredictor(d_model, d_hidden, dropout)
        # Heads and embedding terms read standardised embeddings (see EmbeddingStandardizer).
        self.head_norm = EmbeddingStandardizer(d_model)

    def _active(self, term: str) -> bool:
        """Whether ``term`` contributes to the loss (its weight > 0 and its modules exist)."""
        if self.loss_weights[term] <= 0:
            return False
        required = {
            "cell_type": (self.cell_type_head,),
            "next_cell_type": (self.cell_type_head, self.next_embedding),
            "perturbation": (self.perturbation_head,),
            "phenotype": (self.phenotype_head,),
            "next_phenotype": (self.phenotype_head, self.next_embedding),
            "next_embedding": (self.next_embedding,),
        }.get(term, ())
        return all(module is not None for module in required)

    @property
    def _masks_source(self) -> bool:
        """Whether training masks the source cell (then heads do not read its embedding)."""
        return self.loss_weights["mlm"] > 0 and self.mask_ratio > 0 and self.mlm_cell == "source"

    @property
    def _needs_target_embedding(self) -> bool:
        """Whether some term reads the target cell's embedding (so the target is encoded)."""
        return any(
            self._active(t) for t in HEAD_TERMS if t not in ("next_cell_type", "next_phenotype")
        )

    # ---- building blocks --------------------------------------------------------------------
    def select_genes(self, values: torch.Tensor) -> torch.Tensor | None:
        """Token gene positions (batch, max_genes), or None when every gene is a token."""
        if self.max_genes is None:
            return None
        return select_tokens(values, self.max_genes, random=self.training)

    def _encode(
        self,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        genes: torch.Tensor | None = None,
    ):
        hidden = self.encoder(self.tokenizer(values, mask, genes))
        return hidden[:, 0], hidden[:, 1:]

    def library(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1) library sizes of input rows: their total counts, or, for log-normalised
        inputs, the normalisation target (so that mean "counts" are normalised expression)."""
        if self.log_normalized_input:
            return torch.full_like(x[:, :1], TARGET_SUM)
        return x.sum(-1, keepdim=True).clamp(min=1.0)

    def input_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-normalised values (log1p of counts per 1e4) and library sizes of input rows;
        log-normalised inputs are taken as they are."""
        library = self.library(x)
        if self.log_normalized_input:
            return x, library
        return log_normalize(x, library, TARGET_SUM), library

    @auto_move_data
    def embed_cells(self, x: torch.Tensor) -> torch.Tensor:
        """CLS embeddings (batch, d_model) of unmasked cells (counts, or log-normalised values
        for a model of log-normalised data)."""
        values, _ = self.input_values(x)
        return self._encode(values, genes=self.select_genes(values))[0]

    def decode(self, z: torch.Tensor, gene_sets: torch.Tensor) -> torch.Tensor:
        """Link-space output of the next-cell decoder for sources ``z`` and perturbations."""
        return self.predict_next(z, gene_sets, heads=False)["output"]

    def predict_next(
        self, z: torch.Tensor, gene_sets: torch.Tensor, heads: bool = True
    ) -> dict[str, torch.Tensor]:
        """Everything predicted for sources ``z`` (B, d) under padded ``gene_sets`` (B, K).

        Returns ``output`` (decoder link space), ``dropout_logits`` (ZINB only), with
        ``heads``, ``next_z`` (predicted next-cell embedding) where a next-cell head exists, and
        ``regularization_inputs`` when the perturbation encoder returned inputs for its
        ``regularization_loss`` (graph encoders in training).
        """
        left_out = self._left_out(gene_sets)
        members, regularization_inputs = self.perturbation_encoder.member_vectors(
            gene_sets, left_out
        )
        pooled = self.perturbation_encoder.pool(members, gene_sets)
        residual_members = None
        if self.effect_network == "retrieved" and self.retrieval is not None:
            # padding slots are left out by the decoder itself
            residual_members = ~self.retrieval.looked_up(gene_sets.clamp(min=0), left_out)
        out = {"output": self.decoder(z, members, pooled, gene_sets, residual_members)}
        if regularization_inputs is not None:
            out["regularization_inputs"] = regularization_inputs
        if self.retrieval is not None:
            out["output"] = out["output"] + self.retrieval(gene_sets, left_out)
        if self.dropout_head is not None:
            out["dropout_logits"] = self.dropout_head(torch.cat([z, pooled], dim=-1))
        if heads and self.next_embedding is not None:
            out["next_z"] = self.next_embedding(z, pooled)
        return out

    def optimizer_groups(self, params: list[nn.Parameter], lr: float) -> list[dict]:
        """Optimiser parameter groups of ``params``: the per-gene effects (effect table,
        ``mean_shift``, ``self_effect``) at ``lr * effect_lr_scale`` without weight decay, the
        rest as the optimiser is configured. The effects start at measured values (the warm
        start); Adam moves every coordinate by about the learning rate per step whatever its
        gradient, which at the rate the transformer needs is a random walk of the small
        effects that carry most genes."""
        effects = [self.decoder.mean_shift, self.decoder.self_effect]
        if self.retrieval is not None:
            effects.append(self.retrieval.effects)
        slow = {id(p) for p in effects}
        rest = [p for p in params if id(p) not in slow]
        chosen = [p for p in params if id(p) in slow]
        if self.effect_lr_scale == 1.0 or not chosen:
            return [{"params": params}]
        return [
            {"params": rest},
            {"params": chosen, "lr": lr * self.effect_lr_scale, "weight_decay": 0.0},
        ]

    def _left_out(self, gene_sets: torch.Tensor) -> torch.Tensor | None:
        """With ``effect_network="retrieved"``, in training: the genes of the step taken as
        never perturbed (a boolean mask over the vocabulary, each gene with probability
        ``leave_out``), drawn once so that the perturbation encoder hides their learned vectors
        exactly when the retrieval replaces their effects and the decoder's network serves
        them. Otherwise None: the encoder and the retrieval draw independently."""
        if (
            self.effect_network != "retrieved"
            or not self.training
            or self.retrieval is None
            or self.retrieval.leave_out <= 0
        ):
            return None
        left_out = torch.zeros(
            self.retrieval.n_vocabulary, dtype=torch.bool, device=gene_sets.device
        )
        genes = torch.unique(gene_sets[gene_sets >= 0])
        left_out[genes] = torch.rand(len(genes), device=genes.device) < self.retrieval.leave_out
        return left_out

    def predict_heads(self, z: torch.Tensor, next_cell: bool = False) -> dict[str, torch.Tensor]:
        """Outputs of the trained heads for cell embeddings ``z``.

        ``next_cell=False``: ``z`` are embeddings of cells as they are; ``True``: predicted
        next-cell embeddings (``predict_next(...)["next_z"]``). Returns
        ``cell_type_probabilities`` (B, n_cell_types) and ``phenotype`` (B, n_phenotypes, in
        the scores' own units) for the heads trained for that kind of embedding.
        """
        prefix = "next_" if next_cell else ""
        z = self.head_norm(z)
        out = {}
        if self._active(f"{prefix}cell_type"):
            out["cell_type_probabilities"] = self.cell_type_head(z).softmax(-1)
        if self._active(f"{prefix}phenotype"):
            out["phenotype"] = self.phenotype_head.to_scores(self.phenotype_head(z))
        return out

    def has_phenotype_head(self, next_cell: bool = False) -> bool:
        """Whether phenotypes are trained for current (or, ``next_cell``, predicted) cells."""
        return self._active("next_phenotype" if next_cell else "phenotype")

    def mean_counts(
        self,
        output: torch.Tensor,
        library: torch.Tensor,
        dropout_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted mean counts for cells of total ``library`` (batch, 1).

        For ZINB (``dropout_logits`` given) it is the mean of the zero-inflated counts,
        ``(1 - dropout) * mu``; for ``mse`` the counts whose log-normalised value is the output.
        """
        if self.likelihood == "mse":
            return torch.expm1(output.clamp(min=0.0)) * library / TARGET_SUM
        mean = output.softmax(-1) * library
        if dropout_logits is not None:
            mean = mean * torch.sigmoid(-dropout_logits)
        return mean

    def expected_log_normalized(
        self,
        output: torch.Tensor,
        library: torch.Tensor,
        dropout_logits: torch.Tensor | None = None,
        n_draws: int = 16,
        generator: torch.Generator | None = None,
        estimator: XEstimator = "monte_carlo",
    ) -> torch.Tensor:
        """E[log1p(counts / total * 1e4)] of the predicted cells, the scale data are compared on.

        A mean of log-normalised values is far below the log of a mean where counts are low
        (Jensen's inequality). ``estimator="monte_carlo"``: ``n_draws`` count profiles drawn
        from the likelihood (dropout included for ZINB), each log-normalised by its own total
        as ``sc.pp.normalize_total`` + ``sc.pp.log1p`` would, and averaged (standard error per
        cell and gene: their spread over ``sqrt(n_draws)``). ``"exact"``: the same expectation
        by quadrature (:func:`~pertx_scvi.module._expected.exact_expected_log_normalized`),
        without draws, to within 5e-5. For ``mse`` the output already is that expectation.
        """
        if self.likelihood == "mse":
            return output.clamp(min=0.0)
        if estimator == "exact":
            mean, theta = output.softmax(-1) * library, self.log_theta.exp()
            return exact_expected_log_normalized(mean, theta, dropout_logits, TARGET_SUM)
        if estimator != "monte_carlo":
            raise ValueError(f"estimator must be 'monte_carlo' or 'exact', got {estimator!r}")
        return sampled_expected_log_normalized(
            self.sample_counts, output, library, dropout_logits, n_draws, generator, TARGET_SUM
        )

    def predict(
        self,
        z: torch.Tensor,
        gene_sets: torch.Tensor,
        library: torch.Tensor,
        n_samples: int = 1,
        n_draws: int = 16,
        generator: torch.Generator | None = None,
        draw_generator: torch.Generator | None = None,
        estimator: XEstimator | None = "monte_carlo",
    ) -> dict[str, torch.Tensor | list | dict]:
        """Everything predicted for source cells ``z`` (B, d) under ``gene_sets`` (B, K).

        Returns ``expected`` (E[log-normalised expression], :meth:`expected_log_normalized`
        with ``draw_generator`` and ``estimator``; None when ``estimator`` is None), ``mean``
        (mean counts at the source's ``library``), ``samples`` (``n_samples`` count draws with
        ``generator``) and ``heads`` (outputs of the next-cell heads, empty without them).
        """
        predicted = self.predict_next(z, gene_sets)
        output, dropout = predicted["output"], predicted.get("dropout_logits")
        expected = None
        if estimator is not None:
            expected = self.expected_log_normalized(
                output, library, dropout, n_draws, draw_generator, estimator
            )
        result = {
            "expected": expected,
            "mean": self.mean_counts(output, library, dropout),
            "samples": [
                self.sample_counts(output, library, generator, dropout) for _ in range(n_samples)
            ],
            "heads": {},
        }
        if "next_z" in predicted:
            result["heads"] = self.predict_heads(predicted["next_z"], next_cell=True)
        return result

    def sample_counts(
        self,
        output: torch.Tensor,
        library: torch.Tensor,
        generator: torch.Generator | None = None,
        dropout_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Counts drawn from the likelihood for cells of total ``library`` (batch, 1).

        With ``dropout_logits`` (ZINB) each count is zeroed with probability
        ``sigmoid(dropout_logits)``.
        """
        if self.likelihood == "mse":
            rate = torch.expm1(output.clamp(min=0.0)) * library / TARGET_SUM
            return torch.poisson(rate, generator=generator)
        mean = output.softmax(-1) * library
        theta = self.log_theta.exp()
        rate = torch._standard_gamma(theta.expand_as(mean).contiguous(), generator=generator)
        counts = torch.poisson(rate * mean / theta, generator=generator)
        if dropout_logits is not None:
            keep = torch.bernoulli(torch.sigmoid(-dropout_logits), generator=generator)
            counts = counts * keep
        return counts

    # ---- scvi-tools module protocol ---------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs):
        return {
            "source_x": tensors[BATCH_KEYS.SOURCE_X],
            "target_x": tensors[BATCH_KEYS.TARGET_X],
        }

    @auto_move_data
    def inference(self, source_x: torch.Tensor, target_x: torch.Tensor) -> dict[str, torch.Tensor]:
        source_values, source_library = self.input_values(source_x)
        target_values, target_library = self.input_values(target_x)
        outputs = {
            "target_library": target_library,
            "target_values": target_values,
            "source_library": source_library,
            "source_values": source_values,
        }
        batch = source_x.shape[0]
        heads = self._needs_target_embedding
        mlm = self.loss_weights["mlm"] > 0 and self.mask_ratio > 0
        # Cells that go through the encoder, as one batch of sequences: the source (masked
        # when it is the MLM cell), the masked target (MLM on the target), and the unmasked
        # target when heads read it. Heads never read masked embeddings: masking moves the
        # CLS embedding more than cells differ from each other.
        blocks = ["source"]
        if mlm and self.mlm_cell == "target":
            blocks.append("masked_target")
        if heads:
            blocks.append("target")
        values = {"source": source_values, "masked_target": target_values, "target": target_values}
        cat_values = torch.cat([values[b] for b in blocks])
        genes = self.select_genes(cat_values)
        n_tokens = cat_values.shape[1] if genes is None else genes.shape[1]
        masks = None
        if mlm:
            block = blocks.index("source" if self.mlm_cell == "source" else "masked_target")
            rows = slice(block * batch, (block + 1) * batch)
            masks = torch.zeros(len(cat_values), n_tokens, dtype=torch.bool, device=source_x.device)
            masks[rows] = torch.rand(batch, n_tokens, device=source_x.device) < self.mask_ratio
        z, tokens = self._encode(cat_values, masks, genes)
        outputs["z"] = z[:batch]
        if heads:
            start = blocks.index("target") * batch
            outputs["target_z"] = z[start : start + batch]
        if mlm:
            observed = cat_values[rows]
            if genes is not None:
                observed = observed.gather(1, genes[rows])
            outputs.update(
                mlm_prediction=self.mlm_head(tokens[rows]).squeeze(-1),
                mlm_mask=masks[rows],
                mlm_values=observed,
            )
        return outputs

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {
            "z": inference_outputs["z"],
            "gene_sets": tensors[BATCH_KEYS.PERTURBATION_GENES].long(),
        }

    @auto_move_data
    def generative(self, z: torch.Tensor, gene_sets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict_next(z, gene_sets)

    def _head_terms(self, tensors, inference_outputs, generative_outputs) -> dict:
        """Unweighted per-cell losses of the heads and of the embedding terms."""
        terms = {}
        if not any(self._active(term) for term in HEAD_TERMS):
            return terms
        z, target_z = inference_outputs["z"], inference_outputs.get("target_z")
        # Heads learn from unmasked embeddings with their own labels: the target, and the
        # source (which shares the target's cell type) unless it was masked. One
        # standardisation (statistics of those embeddings) serves every head input.
        if target_z is None:
            current = z
        else:
            current = target_z if self._masks_source else torch.cat([target_z, z])
        statistics = self.head_norm.statistics(current)
        z = self.head_norm(z, statistics)
        current = self.head_norm(current, statistics)
        if target_z is not None:
            target_z = self.head_norm(target_z, statistics)
        next_z = generative_outputs.get("next_z")
        if next_z is not None:
            next_z = self.head_norm(next_z, statistics)
        labels = tensors[BATCH_KEYS.TARGET_LABEL].long().reshape(-1)
        cell_type = tensors[BATCH_KEYS.CELL_TYPE].long().reshape(-1)
        n_current = len(current) // len(labels)
        if self._active("cell_type"):
            logits = self.cell_type_head(current)
            loss = classification_loss(logits, cell_type.repeat(n_current))
            terms["cell_type"] = loss.view(n_current, -1).mean(0)
        if self._active("next_cell_type"):
            terms["next_cell_type"] = classification_loss(self.cell_type_head(next_z), cell_type)
        if self._active("perturbation"):
            terms["perturbation"] = classification_loss(self.perturbation_head(target_z), labels)
        if self.phenotype_head is not None:
            standardize = self.phenotype_head.standardize
            phenotype = standardize(tensors[BATCH_KEYS.PHENOTYPE].float())
            if self._active("phenotype"):
                observed = [phenotype]
                if n_current == 2:
                    observed.append(standardize(tensors[BATCH_KEYS.SOURCE_PHENOTYPE].float()))
                loss = regression_loss(self.phenotype_head(current), torch.cat(observed))
                terms["phenotype"] = loss.view(n_current, -1).mean(0)
            if self._active("next_phenotype"):
                terms["next_phenotype"] = regression_loss(self.phenotype_head(next_z), phenotype)
        if self._active("next_embedding"):
            # The target embedding is a fixed goal (stop-gradient): otherwise the encoder could
            # lower this term by collapsing cell embeddings onto each other.
            terms["next_embedding"] = ((next_z - target_z.detach()) ** 2).mean(-1)
        pair_labels = labels if self.contrastive_labels == "perturbation" else cell_type
        if self._active("contrastive"):
            terms["contrastive"] = supervised_contrastive_loss(
                target_z, pair_labels, self.contrastive_temperature
            )
        if self._active("triplet"):
            terms["triplet"] = triplet_loss(target_z, pair_labels, self.triplet_margin)
        return terms

    def _expression_loss(
        self,
        output: torch.Tensor,
        counts: torch.Tensor,
        library: torch.Tensor,
        values: torch.Tensor,
        dropout_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-cell loss of decoder ``output`` (link space) for observed ``counts``."""
        if self.likelihood == "mse":
            return squared_error_loss(output, values)
        mean = output.softmax(-1) * library
        theta = self.log_theta.exp()
        if dropout_logits is not None:
            return zero_inflated_negative_binomial_loss(counts, mean, theta, dropout_logits)
        return negative_binomial_loss(counts, mean, theta)

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Weighted loss terms and their sum.

        ``reconstruction_loss``: the expression terms, per cell (``next_cell``, the perturbed
        cell's expression; ``reconstruction``, the control cell's own; ``mlm``, the masked
        values). ``extra_metrics``: the other terms (heads and embedding terms per cell;
        ``graph``, the graph encoder's link-prediction regulariser, one value per batch).
        ``loss`` is the sum of every term's mean; each term is logged as ``<term>_train`` /
        ``<term>_validation``.
        """
        expression = {
            "next_cell": self._expression_loss(
                generative_outputs["output"],
                tensors[BATCH_KEYS.TARGET_X],
                inference_outputs["target_library"],
                inference_outputs["target_values"],
                generative_outputs.get("dropout_logits"),
            )
        }
        if self.reconstruction_head is not None:
            expression["reconstruction"] = self._expression_loss(
                self.reconstruction_head(inference_outputs["z"]),
                tensors[BATCH_KEYS.SOURCE_X],
                inference_outputs["source_library"],
                inference_outputs["source_values"],
            )
        if "mlm_prediction" in inference_outputs:
            expression["mlm"] = squared_error_loss(
                inference_outputs["mlm_prediction"],
                inference_outputs["mlm_values"],
                inference_outputs["mlm_mask"],
            )
        others = self._head_terms(tensors, inference_outputs, generative_outputs)
        expression = {name: self.loss_weights[name] * value for name, value in expression.items()}
        others = {name: self.loss_weights[name] * value for name, value in others.items()}
        total = sum(value.mean() for value in [*expression.values(), *others.values()])
        regularization = self.perturbation_encoder.regularization_loss(
            generative_outputs.get("regularization_inputs")
        )
        if regularization is not None:  # already weighted by the encoder's graph_weight
            others["graph"] = regularization
            total = total + regularization
        return LossOutput(loss=total, reconstruction_loss=expression, extra_metrics=others)

    def sample(self, *args, **kwargs):
        raise NotImplementedError("use PertTX.predict_perturbation to sample perturbed cells")
