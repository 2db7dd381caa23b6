"""PertTX: the scvi-tools model class (AnnData in, AnnData out; no tensor maths here).

One role per file, as in scvi-tools' model classes: setup and the registry (``_setup.py``),
training (``_training.py``), outputs and evaluation (``_outputs.py``), model files
(``_model_files.py``); this file builds the model.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.model.base import BaseModelClass

from . import _validation as check
from ._graph_setup import (
    _renames,
    _source_names,
    build_graph_setup,
    load_gene_table,
    load_graphs,
    make_perturbation_encoder,
    resolve_encoder_kind,
)
from ._labels import gene_set_matrix
from ._model_files import ModelFilesMixin
from ._outputs import PredictionMixin
from ._screen import ScreenMixin
from ._setup import SetupMixin
from ._training import TrainingInterrupted, TrainingMixin
from .graphs import GeneGraph, load_id_table
from .module import PertTXModule

__all__ = ["PertTX", "TrainingInterrupted", "resolve_max_genes"]

logger = logging.getLogger(__name__)

GENE_TOKEN_SOURCES = ("go", "string")
"""Built-in tables of ``PertTX(gene_token_embedding=...)``: GO-SVD and STRING spectral."""


AUTO_ALL_GENES_UP_TO = 512
AUTO_MAX_GENES = 256


def resolve_max_genes(max_genes: int | str | None, n_genes: int) -> int | None:
    """Gene tokens per cell for ``PertTX(max_genes=...)``; ``"auto"`` see :class:`PertTX`."""
    if max_genes == "auto":
        return None if n_genes <= AUTO_ALL_GENES_UP_TO else AUTO_MAX_GENES
    if isinstance(max_genes, str):
        raise ValueError(f"max_genes must be 'auto', None or a number of genes, got {max_genes!r}")
    return max_genes


def resolve_likelihood(likelihood: str, is_log_normalized: bool) -> str:
    """``"auto"``: ``"mse"`` for log-normalised data, ``"nb"`` for counts; count likelihoods
    refuse log-normalised data."""
    if likelihood == "auto":
        return "mse" if is_log_normalized else "nb"
    if is_log_normalized and likelihood in check.COUNT_LIKELIHOODS:
        raise ValueError(
            f"likelihood={likelihood!r} needs raw counts, but adata was set up with "
            "is_log_normalized=True (log-normalised values): use likelihood='mse' (the default "
            "for such data), or set up the raw counts (layer=...) with is_log_normalized=False"
        )
    return likelihood


# ---- gene-token tables ---------------------------------------------------------------------------
def load_gene_token_source(spec, n_components: int) -> pd.DataFrame:
    """The ``gene_token_embedding`` input as a genes x dims float32 DataFrame.

    ``"go"``: :func:`~pertx_scvi.graphs.go_embedding` (``n_components`` wide) of the data
    folder's ``graphs/human_gene2go.tsv.gz``; ``"string"``:
    :func:`~pertx_scvi.graphs.spectral_embedding` of ``graphs/string_v12_human_ntm700.tsv.gz``
    (combined scores), both found through :func:`pertx_scvi.datasets.find_data_file`
    (``$PERTX_DATA_DIR``); otherwise a DataFrame, a ``{gene: vector}`` dict or a file for
    :func:`~pertx_scvi.graphs.read_gene_embedding`.
    """
    if isinstance(spec, str) and spec in GENE_TOKEN_SOURCES:
        from .benchmark._sources import GENE2GO_FILE, _find
        from .benchmark._sources import load_graphs as load_named_graphs
        from .graphs import go_embedding, spectral_embedding

        if spec == "go":
            return go_embedding(_find(GENE2GO_FILE, None), n_components=n_components)
        (graph,), _ = load_named_graphs("string")
        return spectral_embedding(graph, n_components=n_components)
    if not isinstance(spec, pd.DataFrame | dict | str | os.PathLike):
        raise TypeError(
            "gene_token_embedding must be a DataFrame (genes x dims), a {gene: vector} dict, a "
            f"file path or one of {GENE_TOKEN_SOURCES}, not {type(spec).__name__}"
        )
    if isinstance(spec, dict):
        widths = {np.asarray(v).size for v in spec.values()}
        if len(widths) > 1:
            raise ValueError(f"gene_token_embedding: vectors of different lengths {sorted(widths)}")
    if isinstance(spec, str | os.PathLike) and not os.path.exists(spec):
        raise FileNotFoundError(
            f"gene_token_embedding {os.fspath(spec)!r} is neither one of {GENE_TOKEN_SOURCES} "
            "nor an existing file"
        )
    table = load_gene_table(spec)
    if table.shape[1] == 0:
        raise ValueError("gene_token_embedding has no columns (no vector values)")
    return table


def match_gene_tokens(table: pd.DataFrame, genes: pd.Index, id_table=None) -> pd.DataFrame:
    """The rows of ``table`` for the measured ``genes`` (data names, in data order) that hold a
    vector (finite, not all zero): matched by name, and through ``id_table`` (a path or a
    DataFrame ``id, id_type, symbol``) for genes the table knows under another name."""
    ids = None if id_table is None else load_id_table(id_table)
    genes = pd.Index([str(g) for g in genes], name="gene")
    renames = _renames(list(genes), table.index, ids)
    rows = table.reindex(_source_names(genes, renames))
    rows.index = genes
    values = rows.to_numpy(dtype=np.float32)
    found = np.isfinite(values).all(1) & (np.abs(np.nan_to_num(values)).sum(1) > 0)
    rows = rows[found].astype(np.float32)
    rows.columns = pd.Index([str(c) for c in rows.columns], dtype=object)  # as saved
    return rows


def project_gene_tokens(values: np.ndarray, d_model: int) -> np.ndarray:
    """Pretrained vectors (n, width) as d_model-wide gene tokens, by a fixed map.

    The rows are centred (when there are two or more), rotated onto their ``d_model`` leading
    principal axes when wider than ``d_model`` (PCA by SVD; each axis' largest loading
    positive) or zero-padded when narrower, and scaled by one number to a root mean square of
    1 per entry: the scale of the N(0, 1) initialisation of the learned rows. Computed once when
    the model is built (never trained), so that frozen rows are fixed token vectors.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) > 1:
        x = x - x.mean(axis=0)
    if x.shape[1] > d_model:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        vt = vt[:d_model]
        vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
        x = x @ vt.T
    if x.shape[1] < d_model:
        x = np.hstack([x, np.zeros((len(x), d_model - x.shape[1]))])
    rms = np.sqrt(np.mean(x**2)) if x.size else 0.0
    return (x / rms if rms > 0 else x).astype(np.float32)


def build_gene_tokens(
    spec, genes: pd.Index, d_model: int, id_table=None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(rows, table, found)`` of ``PertTX(gene_token_embedding=spec)``.

    ``rows``: the input vectors of the measured genes found (data names; what the model keeps
    and saves); ``table`` (len(genes), d_model) their projected vectors
    (:func:`project_gene_tokens`; zeros elsewhere); ``found`` (len(genes),) bool.

    Raises
    ------
    ValueError
        When no measured gene is in the table.
    """
    genes = pd.Index([str(g) for g in genes], name="gene")
    table = load_gene_token_source(spec, d_model)
    rows = match_gene_tokens(table, genes, id_table)
    n_found, n_genes = len(rows), len(genes)
    if n_found == 0:
        raise ValueError(
            f"gene_token_embedding: none of the {n_genes} measured genes (e.g. "
            f"{list(genes[:3])}) has a vector in the table ({len(table)} genes, e.g. "
            f"{list(table.index[:3])}); match the names with setup_anndata(gene_symbols=...) "
            "or id_table="
        )
    if n_found < 0.1 * n_genes:
        warnings.warn(
            f"gene_token_embedding: only {n_found} of {n_genes} measured genes have a "
            "pretrained vector; the others are learned",
            UserWarning,
            stacklevel=3,
        )
    logger.info(
        "gene tokens: pretrained vectors for %d of %d measured genes (%d wide, projected to %d)",
        n_found,
        n_genes,
        table.shape[1],
        d_model,
    )
    found = genes.isin(rows.index)
    projected = np.zeros((n_genes, d_model), dtype=np.float32)
    projected[genes.get_indexer(rows.index)] = project_gene_tokens(rows.to_numpy(), d_model)
    return rows, projected, found


class PertTX(
    ModelFilesMixin, SetupMixin, TrainingMixin, PredictionMixin, ScreenMixin, BaseModelClass
):
    """Perturbation transformer: predicts perturbed cells from control cells.

    Each cell is a sequence of gene tokens (gene embedding + encoded expression value) with a CLS
    token whose output is the cell embedding. A perturbation, a set of genes (``"A+B"``), is
    embedded gene by gene and pooled; a decoder predicts every gene of the perturbed cell from a
    control cell of the same context and the perturbation. Masked-expression reconstruction is
    trained alongside.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    d_model
        Width of gene tokens and of the cell embedding.
    n_heads
        Attention heads.
    n_layers
        Transformer layers.
    d_hidden
        Hidden units of the feed-forward blocks and decoders.
    dropout
        Dropout rate (0 by default: drawing dropout masks over every token is costly on CPU,
        see the model page of the docs; 0.1 is a common choice on a GPU with much data).
    attention_backend
        ``"auto"`` (flash-attn on CUDA when installed, else SDPA), ``"sdpa"``, ``"native"``
        or ``"flash"``.
    likelihood
        ``"nb"`` (negative binomial on counts), ``"zinb"`` (zero-inflated negative binomial:
        a per-gene-per-cell dropout probability predicted from the source cell and the
        perturbation), ``"mse"`` (squared error on log1p(normalize_total) values) or
        ``"auto"``: ``"mse"`` for data set up with ``is_log_normalized=True``, else ``"nb"``.
    mask_ratio
        Share of gene tokens hidden for masked-expression reconstruction.
    mlm_cell
        The cell of each (control, perturbed) pair that is masked: ``"source"`` (default; one
        encoder pass per pair, the masked control cell also gives the embedding the perturbed
        cell is decoded from) or ``"target"`` (the perturbed cell is masked and encoded beside
        the unmasked control: twice the encoder cost per step).
    max_genes
        Gene tokens per cell: expressed genes first, then zeros (randomly chosen in training,
        fixed at inference); the decoders still predict every gene. ``None``: every gene.
        ``"auto"`` (default): every gene up to 512 genes, 256 tokens on wider panels
        (attention cost grows with the square of the tokens: a 2,000-gene panel as tokens
        would cost about 45 times a 299-gene one per cell).
    value_encoding
        Expression value encoder of the tokens: ``"continuous"`` (an MLP of the
        log-normalised value) or ``"binned"`` (scGPT-style per-cell quantile bins).
    next_cell_weight, mlm_weight
        Loss weights of next-cell prediction and masked-expression reconstruction.
    reconstruction_weight
        Loss weight of the control cell's own expression decoded from its embedding
        (scGPT's MVC; it keeps cell embeddings from collapsing onto their context).
    cell_type_weight
        Cell-type classification from the cell embedding (target and source cells); active
        when ``cell_type_key`` names two or more types at setup.
    next_cell_type_weight
        Cell-type classification of the predicted next cell: a predictor maps (source
        embedding, perturbation embedding) to the perturbed cell's embedding and the
        cell-type classifier reads it.
    perturbation_weight
        Classification of the perturbation label from the perturbed cell's embedding.
    phenotype_weight
        Regression of the ``phenotype_keys`` scores (standardised) from the cell embedding;
        active when ``phenotype_keys`` were registered.
    next_phenotype_weight
        Regression of the perturbed cell's phenotype from the predicted next-cell embedding
        (:meth:`predict_phenotype` with ``perturbations``).
    next_embedding_weight
        Squared error between the predicted next-cell embedding and the perturbed cell's own
        embedding (held fixed, so the encoder cannot collapse embeddings to lower it).
    contrastive_weight, contrastive_temperature
        Supervised contrastive term on cell embeddings (cells of a label attract, others repel)
        and its temperature.
    triplet_weight, triplet_margin
        Batch-hard triplet term on cell embeddings and its margin.
    contrastive_labels
        Labels of the contrastive and triplet terms: ``"perturbation"`` or ``"cell_type"``.
    gene_graph
        Prior gene graph(s) for the perturbation encoder: a :class:`~pertx_scvi.GeneGraph`
        (e.g. ``GeneGraph.from_gears_go(...) | GeneGraph.from_omnipath(...)``), a graph file
        (read with :meth:`GeneGraph.read`) or a list of them (one view each). Genes of the
        graph become perturbation genes: genes never perturbed in training are embedded through
        their neighbours and can be predicted. Travels with the model on :meth:`save`.
    gene_embedding
        Pretrained gene vectors, genes x dims (a DataFrame, e.g.
        :func:`pertx_scvi.graphs.go_embedding`, or a file for
        :func:`pertx_scvi.graphs.read_gene_embedding`): the input vectors of the genes found
        there (frozen; ``model.module.perturbation_encoder.unfreeze()`` fine-tunes them),
        learned vectors for the others. Genes without a graph edge still get informed vectors.
    perturbation_encoder
        ``"label"`` (a free vector per perturbed gene; only trained genes can be predicted),
        ``"rgcn"`` (relational GCN over one graph whose relations are kept apart),
        ``"multiview"`` (one propagation per graph, fused by view attention; a single graph is
        split into one view per relation) or ``"auto"``: ``rgcn`` with one graph or a table
        only, ``multiview`` with a list of graphs, ``label`` with neither.
    graph_hops
        Message-passing steps K (each step reaches one hop further).
    graph_weight
        Weight of the link-prediction regulariser on the graph node embeddings (0: off);
        logged as the ``graph`` loss term.
    id_table
        Id table (``human_gene_ids.tsv.gz`` or a DataFrame ``id, id_type, symbol``) to match
        names between the data and the graphs / table (``MARCH8`` is ``MARCHF8`` in the
        graphs); None: exact names only.
    graph_max_neighbours
        In-edges kept per gene and relation, heaviest first (OmniPath hubs have thousands);
        None keeps all.
    graph_self_dropout
        During training, probability of embedding a perturbed gene from its neighbours only
        (its own input vector hidden, theirs kept), so that the encoder learns to embed genes
        the way it must embed unseen ones.
    graph_kwargs
        Further arguments of the graph encoder (e.g. ``n_bases``, ``n_link_samples``; see
        :class:`~pertx_scvi.module.GraphPerturbationEncoder`).
    effect_table
        A learned effect vector per gene that labels name, added to the decoder's output
        (:class:`~pertx_scvi.module.EffectRetrieval`): the direct per-gene path the additive
        and train-mean baselines have.
    effect_retrieval
        With a gene graph (and ``effect_table``): a gene never trained borrows the effects of
        its trained graph neighbours (weights of the graphs and shrinkage fitted by leaving
        trained genes out in training; the graph-neighbour baseline on the model's own
        effects).
    effect_warm_start
        With ``effect_table``: :meth:`train` starts each trained single gene's effect at its
        observed mean effect in the training cells (against controls of the same context), so
        that training starts where the additive baseline is (and, through the retrieval, where
        the graph-neighbour baseline is for untrained genes) instead of at zero.
    effect_network
        Which perturbed genes get the decoder's gene-specific network residual
        (``effect(z, e_g)``): ``"all"``, or ``"retrieved"``: only genes whose effect is
        retrieved (never trained, or left out in a training step), so that a trained gene's
        effect is its effect-table row and the network is the unseen-gene path only; the
        genes left out of a step are then left out of the graph encoder and the retrieval
        together (one draw), so that this path is trained exactly as it is used.
    effect_lr_scale
        Learning rate of the per-gene effects (effect table, the decoder's shared and
        knockdown effects) relative to the training learning rate, without weight decay: the
        warm start has measured them already, and Adam's steps of about the learning rate per
        coordinate would otherwise move small effects at random.
    gene_token_embedding
        Pretrained vectors for the transformer's gene tokens (the measured genes; the
        perturbation side's table is ``gene_embedding``): a DataFrame genes x dims, a
        ``{gene: vector}`` dict, a file for :func:`pertx_scvi.graphs.read_gene_embedding`, or
        ``"go"`` (GO-SVD, :func:`pertx_scvi.graphs.go_embedding` of the data folder's
        ``graphs/human_gene2go.tsv.gz``) or ``"string"``
        (:func:`pertx_scvi.graphs.spectral_embedding` of the STRING graph
        ``graphs/string_v12_human_ntm700.tsv.gz``), both ``d_model`` wide and read from
        ``$PERTX_DATA_DIR``. Genes are matched by name (``gene_symbols`` of the setup, and
        ``id_table`` for other names); how many got a vector is logged. Their tokens start from
        the vectors mapped to ``d_model`` by a fixed map (centred, PCA when wider, zero-padded
        when narrower, scaled to unit root mean square) and stay frozen (no gradient, no weight
        decay); the other genes' tokens are learned as without a table.
        :meth:`unfreeze_gene_tokens` fine-tunes all. The model keeps (and saves) the input rows
        of the genes found, under the data's names.

    Notes
    -----
    A loss weight of 0 removes that term from training and skips its computation; each term
    with a positive weight is logged per epoch in ``model.history`` as ``<term>_train`` (and
    ``<term>_validation``).

    Examples
    --------
    >>> import pertx_scvi as px
    >>> adata = px.datasets.papalexi2021()
    >>> px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    >>> model = px.PertTX(adata)
    >>> model.train(max_epochs=10, holdout_perturbations=["STAT1"])
    >>> adata.obsm["X_pertx"] = model.get_latent_representation()
    >>> pred = model.predict_perturbation(adata[adata.obs.perturbation == "control"], ["IRF1"])
    """

    _module_cls = PertTXModule

    def __init__(
        self,
        adata: AnnData | None = None,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_hidden: int = 128,
        dropout: float = 0.0,
        attention_backend: str = "auto",
        likelihood: str = "auto",
        mask_ratio: float = 0.15,
        mlm_cell: str = "source",
        max_genes: int | str | None = "auto",
        value_encoding: str = "continuous",
        next_cell_weight: float = 1.0,
        mlm_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        cell_type_weight: float = 1.0,
        next_cell_type_weight: float = 1.0,
        perturbation_weight: float = 0.0,
        phenotype_weight: float = 1.0,
        next_phenotype_weight: float = 1.0,
        next_embedding_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        triplet_weight: float = 0.0,
        contrastive_labels: str = "perturbation",
        contrastive_temperature: float = 0.1,
        triplet_margin: float = 0.2,
        gene_graph: GeneGraph | list[GeneGraph] | str | None = None,
        gene_embedding: pd.DataFrame | str | None = None,
        perturbation_encoder: str = "auto",
        graph_hops: int = 2,
        graph_weight: float = 0.0,
        id_table: str | pd.DataFrame | None = None,
        graph_max_neighbours: int | None = 32,
        graph_self_dropout: float = 0.5,
        graph_kwargs: dict | None = None,
        effect_table: bool = True,
        effect_retrieval: bool = True,
        effect_warm_start: bool = True,
        effect_network: str = "all",
        effect_lr_scale: float = 1.0,
        gene_token_embedding: pd.DataFrame | dict | str | os.PathLike | None = None,
    ):
        super().__init__(adata)
        if adata is None:
            raise ValueError("PertTX needs the AnnData it was set up with: PertTX(adata)")
        setup = self.registry_["setup_args"]
        likelihood = resolve_likelihood(likelihood, self._is_log_normalized)
        if likelihood in check.COUNT_LIKELIHOODS:  # before anything is built or changed
            matrix = check.get_matrix(adata, setup["layer"])
            check.check_counts(matrix, setup["layer"], True, likelihood)

        self.gene_names = self._gene_names(adata)
        labels = self._label_categories()
        self._label_genes = [self._parse(label) for label in labels]
        # Labels naming one gene set ("A+B" and "B+A", "A" and "A+ctrl") are one perturbation:
        # cells are coded by the first category of their gene set.
        self._gene_set_codes: dict[tuple[str, ...], int] = {}
        for code, genes in enumerate(self._label_genes):
            self._gene_set_codes.setdefault(genes, code)
        label_genes = sorted({g for genes in self._label_genes for g in genes})
        encoder_kind = resolve_encoder_kind(perturbation_encoder, gene_graph, gene_embedding)
        pert_encoder, self.graph_setup_ = None, None
        if encoder_kind == "label":
            vocabulary = pd.Index(label_genes, name="gene")
        else:
            # Graph files are read once, here: the model keeps the graphs themselves (they
            # travel with it on save), not paths that may move.
            if gene_graph is not None:
                graphs = load_graphs(gene_graph, id_table)
                gene_graph = graphs if isinstance(gene_graph, list | tuple) else graphs[0]
            # Vocabulary: label genes, graph genes and table genes (data names where they differ).
            self.graph_setup_ = build_graph_setup(
                label_genes,
                self.gene_names,
                gene_graph,
                gene_embedding,
                kind=encoder_kind,
                id_table=id_table,
                max_neighbours=graph_max_neighbours,
            )
            vocabulary = self.graph_setup_.vocabulary
            encoder_kwargs = {"dropout": dropout, "self_dropout": graph_self_dropout}
            encoder_kwargs.update(graph_kwargs or {})
            pert_encoder = make_perturbation_encoder(
                self.graph_setup_,
                d_model,
                n_hops=graph_hops,
                graph_weight=graph_weight,
                **encoder_kwargs,
            )
        # Kept to resolve perturbation names at prediction as in training (MARCH8 -> MARCHF8);
        # rebuilt from init_params_["id_table"] when the model is loaded.
        self._id_table = None
        if id_table is not None and self.graph_setup_ is not None:
            self._id_table = load_id_table(id_table)
        self.perturbation_genes = pd.Index(vocabulary, name="gene")
        self._label_gene_sets = gene_set_matrix(self._label_genes, self.perturbation_genes)
        self_gene_index = torch.from_numpy(self.gene_names.get_indexer(self.perturbation_genes))
        token_table = token_found = None
        if gene_token_embedding is not None:
            # The model keeps (init_params_, saved files) the input rows of the genes found,
            # under the data's names: a load needs neither the data folder nor the source file.
            gene_token_embedding, token_table, token_found = build_gene_tokens(
                gene_token_embedding, self.gene_names, d_model, id_table
            )
            token_table, token_found = map(torch.from_numpy, (token_table, token_found))

        self.module = self._module_cls(
            n_genes=adata.n_vars,
            n_perturbation_genes=len(self.perturbation_genes),
            self_gene_index=self_gene_index,
            perturbation_encoder=pert_encoder,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
            d_hidden=d_hidden,
            dropout=dropout,
            attention_backend=attention_backend,
            likelihood=likelihood,
            log_normalized_input=self._is_log_normalized,
            mask_ratio=mask_ratio,
            mlm_cell=mlm_cell,
            max_genes=resolve_max_genes(max_genes, adata.n_vars),
            value_encoding=value_encoding,
            next_cell_weight=next_cell_weight,
            mlm_weight=mlm_weight,
            reconstruction_weight=reconstruction_weight,
            **self._head_sizes(adata),
            cell_type_weight=cell_type_weight,
            next_cell_type_weight=next_cell_type_weight,
            perturbation_weight=perturbation_weight,
            phenotype_weight=phenotype_weight,
            next_phenotype_weight=next_phenotype_weight,
            next_embedding_weight=next_embedding_weight,
            contrastive_weight=contrastive_weight,
            triplet_weight=triplet_weight,
            contrastive_labels=contrastive_labels,
            contrastive_temperature=contrastive_temperature,
            triplet_margin=triplet_margin,
            effect_genes=self._effect_genes() if effect_table else None,
            retrieval_graphs=(
                self.graph_setup_.graphs if effect_retrieval and self.graph_setup_ else None
            ),
            retrieval_leave_out=graph_self_dropout,
            effect_network=effect_network,
            effect_lr_scale=effect_lr_scale,
            gene_token_table=token_table,
            gene_token_found=token_found,
        )
        self._effect_warm_start = bool(effect_warm_start)
        self.holdout_perturbations_: list[str] = []
        self._model_summary_string = (
            f"PertTX: {adata.n_vars} genes, {len(labels)} perturbation labels over "
            f"{len(self.perturbation_genes)} genes, d_model={d_model}, n_layers={n_layers}, "
            f"n_heads={n_heads}, likelihood={likelihood}, "
            f"attention={self.module.encoder.backend}, perturbation encoder={encoder_kind}"
        )
        if token_found is not None:
            self._model_summary_string += (
                f", pretrained gene tokens for {int(token_found.sum())} genes"
            )
        self.init_params_ = self._get_init_params(locals())
        # The attention kernel is not part of a checkpoint (the weights do not depend on it): a
        # model saved on a GPU with flash-attn loads on a CPU with the best kernel there.
        self.init_params_["non_kwargs"]["attention_backend"] = "auto"

    def _effect_genes(self) -> torch.Tensor:
        """Vocabulary positions of the genes that perturbation labels name."""
        positions = self._label_gene_sets[self._label_gene_sets >= 0]
        return torch.from_numpy(np.unique(positions).astype(np.int64))

    def _gene_tokens(self):
        embedding = self.module.tokenizer.gene_embedding
        if not embedding.has_table:
            raise ValueError(
                "this model has no pretrained gene-token table: build it with "
                "PertTX(adata, gene_token_embedding=...)"
            )
        return embedding

    def unfreeze_gene_tokens(self) -> None:
        """Fine-tune the pretrained gene-token rows too (call before :meth:`train`).

        The rows of the genes found in ``gene_token_embedding`` are fixed until then; after it
        every gene token is trained, the pretrained ones starting from their vectors. The state
        is saved with the model. See :meth:`freeze_gene_tokens`.
        """
        self._gene_tokens().unfreeze()

    def freeze_gene_tokens(self) -> None:
        """Fix the pretrained gene-token rows again (the default), at their current values."""
        self._gene_tokens().freeze()

    def set_attention_backend(self, backend: str) -> None:
        """Switch the attention kernel (``"auto"``, ``"sdpa"``, ``"native"``, ``"flash"``).

        The weights do not depend on the kernel, so a trained or loaded model can be moved to
        another one, e.g. ``PertTX.load(path, adata).set_attention_backend("native")``.
        """
        self.module.encoder.set_backend(backend)
