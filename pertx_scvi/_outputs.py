"""Outputs of :class:`~pertx_scvi.PertTX`: cell and perturbation embeddings, predicted
cells, phenotypes and profiles (AnnData / DataFrames assembled from
:meth:`PertTXModule.predict <pertx_scvi.module.PertTXModule.predict>`), and ``evaluate``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import metrics
from ._constants import REGISTRY_KEYS
from ._labels import check_labels, gene_set_matrix, is_blank_label
from ._streaming import (
    OUTPUTS,
    X_ESTIMATORS,
    PredictionBlock,
    PredictionLayout,
    collect_anndata,
    collect_means,
    iter_predictions,
)
from ._streaming_io import FILE_FORMATS, check_output_path, write_predictions
from ._threads import keep_torch_threads
from .data import cell_loader
from .graphs import GeneGraph
from .graphs._id_mapping import resolve_names

logger = logging.getLogger(__name__)


class PredictionMixin:
    """Embeddings, predictions and evaluation of :class:`~pertx_scvi.PertTX`."""

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int = 512,
    ) -> np.ndarray:
        """Cell embeddings (CLS token output), cells x ``d_model``.

        Parameters
        ----------
        adata
            AnnData with the training genes; defaults to the registered one.
        indices
            Cells of ``adata`` to embed; all by default.
        batch_size
            Cells per forward pass.
        """
        self._check_if_trained(warn=True)
        adata = self.adata if adata is None else adata
        if indices is not None:
            adata = adata[np.asarray(indices)]
        cells = self._registered_cells(adata)
        self.module.eval()
        embeddings = [
            self.module.embed_cells(batch).cpu() for batch in cell_loader(cells, batch_size)
        ]
        return torch.cat(embeddings).numpy() if embeddings else np.zeros((0, 0), np.float32)

    def _gene_sets_for(self, perturbations: Sequence[str]) -> np.ndarray:
        """Padded vocabulary positions of each label; a clear error for genes the model can't embed."""
        separator = self._setup_args["label_separator"]
        blank = [p for p in perturbations if is_blank_label(p, separator)]
        if blank:
            raise ValueError(f"empty perturbation label(s) {blank}: name the gene(s), e.g. 'STAT1'")
        gene_sets = [self._parse(p) for p in perturbations]
        known = self.module.perturbation_encoder.can_embed().cpu().numpy()
        if self._id_table is not None:
            gene_sets = self._resolve_gene_names(gene_sets, known)
        for label, genes in zip(perturbations, gene_sets, strict=True):
            positions = self.perturbation_genes.get_indexer(list(genes))
            absent = [
                g for g, pos in zip(genes, positions, strict=True) if pos < 0 or not known[pos]
            ]
            if absent and getattr(self.module.perturbation_encoder, "has_prior", False):
                raise ValueError(
                    f"cannot embed perturbation {label!r}: gene(s) {absent} were never perturbed "
                    "in training and are in neither the gene graph nor the gene embedding table "
                    "of this model (names are matched as in the data; pass id_table= to "
                    "PertTX to match aliases and outdated symbols)"
                )
            if absent:
                raise ValueError(
                    f"cannot embed perturbation {label!r}: gene(s) {absent} were never perturbed "
                    "in training and this model has no gene graph or gene embedding table to "
                    "embed them; train with a gene graph (PertTX(adata, gene_graph=...)) to "
                    "predict unseen genes"
                )
        return gene_set_matrix(gene_sets, self.perturbation_genes)

    def _resolve_gene_names(
        self, gene_sets: list[tuple[str, ...]], known: np.ndarray
    ) -> list[tuple[str, ...]]:
        """Genes unknown under their own name, renamed through the model's id table to the
        gene of the vocabulary they are (``MARCH8`` -> ``MARCHF8``), as the graphs were read."""
        vocabulary = self.perturbation_genes
        absent = sorted({g for genes in gene_sets for g in genes if g not in vocabulary})
        if not absent:
            return gene_sets
        embeddable = vocabulary[known]
        names = resolve_names(absent, embeddable, self._id_table)
        renamed = {g: n for g, n in names.items() if n is not None and n != g}
        if renamed:
            logger.info("perturbation genes matched through the id table: %s", renamed)
        return [tuple(sorted({renamed.get(g, g) for g in genes})) for genes in gene_sets]

    @torch.inference_mode()
    def get_perturbation_embedding(self, perturbations: Sequence[str]) -> np.ndarray:
        """Embedding (len(perturbations) x d_model) of perturbation labels such as ``"A+B"``."""
        gene_sets = torch.from_numpy(self._gene_sets_for(list(perturbations)))
        self.module.eval()
        return self.module.perturbation_encoder(gene_sets.to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def predict_perturbation(
        self,
        adata: AnnData,
        perturbations: Sequence[str],
        n_samples: int | None = None,
        n_draws: int = 16,
        batch_size: int = 256,
        seed: int = 0,
        *,
        x_estimator: Literal["exact", "monte_carlo"] = "exact",
        output: Literal["anndata", "means", "h5ad", "zarr"] = "anndata",
        path: str | os.PathLike | None = None,
        overwrite: bool = False,
    ) -> AnnData | Path:
        """Predict how the cells of ``adata`` (usually controls) respond to each perturbation.

        The source cells are read and encoded one batch at a time, each batch once for all
        perturbations; what is kept of the predictions is set by ``output``.

        Parameters
        ----------
        adata
            Source cells with the training genes (counts in the registered layer); may be
            backed.
        perturbations
            Labels to predict, e.g. ``["IRF1", "IRF1+JAK2"]``: combinations of any size,
            including ones never seen in training.
        n_samples
            Count profiles drawn from the likelihood per source cell and perturbation
            (``layers["counts"]``). Default: 1 for the cell outputs, 0 (no draws, no counts
            layer, one row per source cell and perturbation) to save their time; always 0 for
            ``output="means"``.
        n_draws
            Monte Carlo draws per predicted cell behind ``X`` (``x_estimator="monte_carlo"``).
        batch_size
            Source cells per forward pass (and rows per write for the file outputs).
        seed
            Seed of the count sampling and of the Monte Carlo draws. The same seed, batch size
            and perturbations give the same numbers in every ``output``.
        x_estimator
            How ``X`` is computed. ``"exact"`` (default): the expectation by numerical
            integration of the likelihood's generating function
            (:func:`~pertx_scvi.module._expected.exact_expected_log_normalized`), to within
            5e-5, without draws: no Monte Carlo error (0.24 on average per cell and gene at 16
            draws on the Papalexi screen) and about 4 times faster than 16 draws.
            ``"monte_carlo"``: the average of ``n_draws`` log-normalised count draws per
            predicted cell (the default before 2026-11-30). The mean
            profiles of the two (2,386 control sources, 23 knockouts of the Papalexi screen)
            differ by 0.043 at most and 0.005 on average per gene at ``n_draws=16``, as two
            16-draw runs with other seeds do (0.064, 0.007); by 0.015 and 0.002 at
            ``n_draws=128``.
        output
            ``"anndata"`` (default): every predicted cell in one AnnData, in memory (about
            ``n_obs * len(perturbations) * max(n_samples, 1) * n_genes * 8`` bytes).
            ``"means"``: per-perturbation means only, perturbations x genes, in memory that
            does not grow with the number of cells. ``"h5ad"`` / ``"zarr"``: every predicted
            cell written to ``path`` block by block, never all in memory; reads back with
            :func:`anndata.read_h5ad` / :func:`anndata.read_zarr` as the AnnData
            ``output="anndata"`` returns.
        path
            File (``.h5ad``) or store (``.zarr``) of the file outputs; it is written under a
            hidden name beside it and moved there when complete.
        overwrite
            Replace an existing ``path``.

        Returns
        -------
        ``output="anndata"``: AnnData with one row per perturbation, sample and source cell
        (perturbation-major):

        - ``X``: the expected log-normalised expression of the predicted cell,
          E[log1p(counts / total * 1e4)] under the model's likelihood (see ``x_estimator``).
          It is on the scale of ``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p``
          data: ``pred.X.mean(0)`` compares directly with the mean of observed cells. (The
          log of the predicted mean count would sit far above it on sparse data.) For
          ``likelihood="mse"`` it is the prediction itself.
        - ``layers["mean"]``: the predicted mean counts at the source cell's library size
          (for ZINB the mean of the zero-inflated counts).
        - ``layers["counts"]`` (``n_samples >= 1``): counts sampled from the likelihood
          (dropout included for ZINB) with the source cell's library size.
          (For a model of log-normalised data, set up with ``is_log_normalized=True``, ``X``
          is the predicted log-normalised expression, marked by ``uns["log1p"]`` as scanpy
          does, and there are no count layers.)
        - ``obs["perturbation"]``, ``obs["source_cell"]`` (categorical), ``obs["sample"]``,
          the source cells' cell-type and batch columns; where the model has the heads,
          ``obs["predicted_<cell_type_key>"]`` and ``obsm["<cell_type_key>_probabilities"]``
          (cell type of the predicted cell), and ``obs["predicted_<phenotype key>"]`` (its
          phenotype scores).
        - ``uns["pertx"]``: how ``X`` was computed.

        ``output="means"``: AnnData with one row per perturbation (``obs_names``): ``X`` and
        ``layers["mean"]`` the means over source cells of the above, ``obs["n_cells"]``, the
        mean phenotype scores and cell-type probabilities where the model has the heads.

        ``output="h5ad"`` / ``"zarr"``: the path written.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output in FILE_FORMATS:
            if path is None:
                raise ValueError(f"output={output!r} writes a file: pass path=")
            path = check_output_path(path, overwrite)
        elif path is not None:
            raise ValueError(
                f"path is the file of output='h5ad' or 'zarr'; output={output!r} returns the "
                "prediction in memory"
            )
        if n_samples is None:
            n_samples = 0 if output == "means" else 1
        if output == "means" and n_samples != 0:
            raise ValueError(
                "output='means' keeps no cells and draws no counts: leave n_samples unset (its "
                f"mean is layers['mean']), got n_samples={n_samples}"
            )
        blocks, layout = self._prediction_stream(
            adata, perturbations, n_samples, n_draws, x_estimator, batch_size, seed
        )
        if output == "anndata":
            return collect_anndata(blocks, layout)
        if output == "means":
            return self._means_anndata(collect_means(blocks, len(layout.perturbations)), layout)
        return write_predictions(blocks, layout, path, output, batch_size, overwrite)

    def _prediction_stream(
        self,
        adata: AnnData,
        perturbations: Sequence[str],
        n_samples: int,
        n_draws: int,
        x_estimator: str | None,
        batch_size: int,
        seed: int,
    ) -> tuple[Iterator[PredictionBlock], PredictionLayout]:
        """Checked arguments, the blocks of :func:`~pertx_scvi._streaming.iter_predictions`
        (lazy: nothing is predicted until they are read) and the layout of their rows.
        ``x_estimator=None`` skips ``X``."""
        self._check_if_trained(warn=True)
        perturbations = [str(p) for p in perturbations]
        if not perturbations:
            raise ValueError("perturbations is empty: name at least one label, e.g. ['STAT1']")
        repeated = sorted(set(pd.Index(perturbations)[pd.Index(perturbations).duplicated()]))
        if repeated:
            raise ValueError(f"perturbations {repeated} are listed more than once")
        if adata.n_obs == 0:
            raise ValueError("adata has no cells to use as sources")
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        if x_estimator is not None and x_estimator not in X_ESTIMATORS:
            raise ValueError(f"x_estimator must be one of {X_ESTIMATORS}, got {x_estimator!r}")
        if x_estimator == "monte_carlo" and n_draws < 1:
            raise ValueError(f"n_draws must be >= 1, got {n_draws} (or use x_estimator='exact')")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gene_sets = torch.from_numpy(self._gene_sets_for(perturbations)).to(self.device)
        cells = self._registered_cells(adata)
        setup = self._setup_args
        counts = not self._is_log_normalized  # without counts, X is the whole prediction
        uns = {
            "pertx": {
                "X": "E[log1p(counts / total * 1e4)] under the model "
                + ("(Monte Carlo)" if x_estimator == "monte_carlo" else "(exact, quadrature)")
                if counts
                else "predicted log1p(normalize_total) values (model of log-normalised data)",
                "x_estimator": x_estimator,
                "n_draws": n_draws,
                "n_samples": n_samples,
            }
        }
        if not counts:
            uns["log1p"] = {"base": None}  # scanpy's marker: X is log-normalised
        layout = PredictionLayout.from_source(
            adata,
            (setup["cell_type_key"], setup["batch_key"]),
            perturbations=perturbations,
            var_names=self._registered_var_names(),
            n_samples=n_samples,
            counts=counts,
            cell_type_key=setup["cell_type_key"],
            classes=np.asarray(self._mapping(REGISTRY_KEYS.CELL_TYPE_KEY)).astype(str),
            phenotype_keys=list(setup["phenotype_keys"] or []),
            uns=uns,
        )
        self.module.eval()
        blocks = iter_predictions(
            self.module,
            cells,
            gene_sets,
            batch_size=batch_size,
            n_samples=n_samples if counts else 0,
            n_draws=n_draws,
            estimator=x_estimator,
            seed=seed,
            device=self.device,
        )
        return blocks, layout

    def _means_anndata(self, means: dict[str, np.ndarray], layout: PredictionLayout) -> AnnData:
        """The ``output="means"`` AnnData from :func:`~pertx_scvi._streaming.collect_means`."""
        index = pd.Index(layout.perturbations, name="perturbation")
        heads = {
            name.removeprefix("heads/"): value
            for name, value in means.items()
            if name.startswith("heads/")
        }
        columns, tables = layout.head_columns(index, heads)
        columns = {k: v for k, v in columns.items() if not isinstance(v, pd.Categorical)}
        obs = pd.DataFrame({"n_cells": layout.n_sources, **columns}, index=index)
        layers = {"mean": means["mean"]} if layout.counts else {}
        uns = {**layout.uns, "pertx": {**layout.uns["pertx"], "output": "means"}}
        result = AnnData(X=means["X"], obs=obs, var=layout.var(), layers=layers, uns=uns)
        for name, table in tables.items():
            result.obsm[name] = table
        return result

    @torch.inference_mode()
    def predict_phenotype(
        self,
        adata: AnnData | None = None,
        perturbations: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> pd.DataFrame:
        """Phenotype scores (the ``phenotype_keys`` of setup) predicted from cell embeddings.

        Parameters
        ----------
        adata
            Cells with the training genes; defaults to the registered AnnData.
        perturbations
            ``None``: the phenotype of each cell as it is. Labels (e.g. ``["STAT1", "A+B"]``):
            the predicted phenotype of each cell after each perturbation, read from the
            predicted next-cell embedding (source embedding + perturbation embedding).
        batch_size
            Cells per forward pass.

        Returns
        -------
        DataFrame with one column per phenotype key. Without ``perturbations`` indexed by
        ``adata.obs_names``; with them one row per perturbation and source cell
        (perturbation-major, as :meth:`predict_perturbation`) with the extra columns
        ``perturbation`` and ``source_cell``.
        """
        keys = list(self._setup_args["phenotype_keys"] or [])
        if not keys:
            raise ValueError(
                "predict_phenotype needs phenotype scores, but this model was set up without "
                "phenotype_keys: call PertTX.setup_anndata(adata, ..., phenotype_keys=[...]) "
                "and train a new model"
            )
        needs = "next_phenotype_weight" if perturbations is not None else "phenotype_weight"
        if not self.module.has_phenotype_head(next_cell=perturbations is not None):
            raise ValueError(f"this model was built with {needs}=0: it has no such head")
        self._check_if_trained(warn=True)
        adata = self.adata if adata is None else adata
        if adata.n_obs == 0:
            raise ValueError("adata has no cells")
        cells = self._registered_cells(adata)
        self.module.eval()
        if perturbations is None:
            scores = [
                self.module.predict_heads(self.module.embed_cells(batch))["phenotype"].cpu()
                for batch in cell_loader(cells, batch_size)
            ]
            return pd.DataFrame(torch.cat(scores).numpy(), index=adata.obs_names, columns=keys)

        perturbations = [str(p) for p in perturbations]
        if not perturbations:
            raise ValueError("perturbations is empty: name at least one label, e.g. ['STAT1']")
        gene_sets = torch.from_numpy(self._gene_sets_for(perturbations)).to(self.device)
        n_pert, n_src = len(perturbations), adata.n_obs
        scores = np.zeros((n_pert, n_src, len(keys)), dtype=np.float32)
        start = 0
        for batch in cell_loader(cells, batch_size):
            z = self.module.embed_cells(batch)
            stop = start + len(z)
            for p in range(n_pert):
                next_z = self.module.predict_next(z, gene_sets[p].expand(len(z), -1))["next_z"]
                phenotype = self.module.predict_heads(next_z, next_cell=True)["phenotype"]
                scores[p, start:stop] = phenotype.cpu().numpy()
            start = stop
        result = pd.DataFrame(
            {
                "perturbation": pd.Categorical(
                    np.repeat(perturbations, n_src), categories=perturbations
                ),
                "source_cell": np.tile(np.asarray(adata.obs_names), n_pert),
            }
        )
        result[keys] = scores.reshape(n_pert * n_src, len(keys))
        return result

    @torch.inference_mode()
    def predict_profiles(
        self,
        adata: AnnData,
        perturbations: Sequence[str],
        profile: str = "expected",
        n_samples: int = 2,
        n_draws: int = 16,
        batch_size: int = 256,
        seed: int = 0,
        chunk_size: int | None = None,
        *,
        x_estimator: Literal["exact", "monte_carlo"] = "exact",
    ) -> pd.DataFrame:
        """Mean predicted log-normalised profile (perturbations x genes) over ``adata``'s cells.

        One pass over ``adata`` for all perturbations (each batch of source cells encoded
        once), keeping only the sums: memory does not grow with the number of cells.

        Parameters
        ----------
        adata
            Source cells (usually controls).
        perturbations
            Labels to predict.
        profile
            ``"expected"`` (default): the mean of :meth:`predict_perturbation`'s ``X`` (the
            same numbers, for the same arguments), the expected log1p(normalize_total 1e4)
            value, on the scale of the mean of observed cells; no counts are drawn.
            ``"sampled"``: counts drawn from the likelihood (``n_samples`` per source cell),
            log-normalised per cell and averaged; the same quantity with more noise.
        n_samples, n_draws, batch_size, seed, x_estimator
            As in :meth:`predict_perturbation` (``n_samples`` only for ``"sampled"``,
            ``n_draws`` and ``x_estimator`` only for ``"expected"``).
        chunk_size
            Deprecated, unused: every perturbation is predicted in the one pass.
        """
        if profile not in ("expected", "sampled"):
            raise ValueError(f"profile must be 'expected' or 'sampled', got {profile!r}")
        sampled = profile == "sampled"
        if sampled and self._is_log_normalized:
            raise ValueError(
                "profile='sampled' draws counts, but this model was set up on log-normalised "
                "values (is_log_normalized=True): use profile='expected'"
            )
        if sampled and n_samples < 1:
            raise ValueError(f"profile='sampled' needs n_samples >= 1, got {n_samples}")
        if chunk_size is not None:
            warnings.warn(
                "predict_profiles(chunk_size=...) is no longer used: all perturbations are "
                "predicted in one pass over the source cells",
                FutureWarning,
                stacklevel=2,
            )
        blocks, layout = self._prediction_stream(
            adata,
            perturbations,
            n_samples if sampled else 0,
            n_draws,
            None if sampled else x_estimator,
            batch_size,
            seed,
        )
        means = collect_means(blocks, len(layout.perturbations), sampled=sampled)
        return pd.DataFrame(
            means["sampled" if sampled else "X"],
            index=pd.Index(layout.perturbations, name="perturbation"),
            columns=self._registered_var_names().astype(str),
        )

    @keep_torch_threads()  # the metrics' numba kernels reset the thread count torch uses
    def evaluate(
        self,
        adata: AnnData | None = None,
        perturbations: Sequence[str] | None = None,
        baselines: Sequence[str] | dict | None = metrics.BASELINE_NAMES,
        gene_graph: GeneGraph | None = None,
        gene_embedding: pd.DataFrame | None = None,
        n_top_de: int = 20,
        split_controls: bool = True,
        batch_size: int = 256,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Score predictions of held-out perturbations against baselines fitted on the same cells.

        The held-out protocol of :func:`pertx_scvi.metrics.evaluate_heldout`: metrics
        (:func:`pertx_scvi.metrics.compare`) per perturbation in log1p(normalize_total 1e4)
        space, PertTX's profile being the mean of :meth:`predict_perturbation`'s ``X`` over the
        fitting controls. The control cells are kept apart
        (:func:`pertx_scvi.metrics.control_masks`): controls that training left out
        (``train(control_cells=...)``) are the reference of the observed effects; otherwise the
        controls are split into random halves, one that predictions start from and baselines
        are fitted on, one that observed effects are taken against.

        Parameters
        ----------
        adata
            Cells with the held-out perturbations and controls; the registered AnnData by
            default (then the baselines see exactly the model's training cells).
        perturbations
            Labels to evaluate; defaults to the ones held out in training.
        baselines
            Names among :data:`pertx_scvi.metrics.BASELINE_NAMES` (the graph-neighbour ones
            need ``gene_graph``), or a dict name -> fitted baseline.
        gene_graph
            :class:`~pertx_scvi.GeneGraph` of the graph-neighbour baselines.
        gene_embedding
            Gene x dims table of the linear baseline.
        n_top_de
            Number of top DE genes of the ``*_top`` metrics.
        split_controls
            Keep fitting and reference controls apart (default). ``False`` shares them and
            warns: their common noise then inflates the correlations.
        batch_size, seed
            Prediction batch size; seed of the control split, the prediction and the
            strong-effect splits.

        With a registered ``cell_type_key`` every perturbation is scored in each cell type
        where it has cells, against that cell type's own controls (split per cell type), with
        baselines fitted per cell type (``baselines`` must then be names); the table gains a
        ``context`` column.

        Returns
        -------
        Tidy DataFrame (method, perturbation, metric, value, strong_effect, ...), also stored
        in ``adata.uns["pertx_evaluation"]``; ``.attrs["controls"]`` says how the controls
        were used. Summarise with :func:`pertx_scvi.metrics.summarize` and
        :func:`pertx_scvi.metrics.paired_differences`.
        """
        self._check_if_trained(warn=False)
        target = self.adata if adata is None else adata
        setup = self._setup_args
        key, control = setup["perturbation_key"], str(setup["control_group"])
        requested = [str(p) for p in (perturbations or self.holdout_perturbations_)]
        if not requested:
            raise ValueError(
                "no perturbations to evaluate: pass perturbations= or train with "
                "holdout_perturbations="
            )
        separator = setup["label_separator"]
        no_gene = [p for p in requested if is_blank_label(p, separator) or not self._parse(p)]
        if no_gene:
            raise ValueError(f"perturbations {no_gene} name no gene: nothing to evaluate")
        if key not in target.obs.columns:
            raise KeyError(f"column {key!r} (used at setup) not found in adata.obs")
        if target is not self.adata:
            check_labels(
                target.obs[key].astype(str).value_counts(sort=False),
                key,
                control,
                setup["label_separator"],
            )
        # The training genes in training order (by name) and one spelling per gene set, in a
        # new AnnData: the metrics and baselines see what the model sees; adata is unchanged.
        data = self._aligned_adata(target)
        spelled: dict[str, str] = {}
        for p, canonical in zip(requested, self._canonical_labels(requested), strict=True):
            spelled.setdefault(canonical, p)  # the first spelling names a repeated gene set
        perturbations = list(spelled)
        labels = data.obs[key].to_numpy()
        absent = [spelled[p] for p in perturbations if not (labels == p).any()]
        if absent:
            raise ValueError(
                f"perturbations {absent} have no cells in adata.obs[{key!r}] to compare to"
            )
        train_mask = trained_controls = None
        if target is self.adata:
            train_mask = np.zeros(target.n_obs, dtype=bool)
            train_mask[np.concatenate([self.train_indices, self.validation_indices])] = True
            trained_controls = train_mask & (labels == control)
        # Several cell types: a perturbation is scored in every cell type where it has cells,
        # against that cell type's own controls (split per cell type) and baselines.
        context_key = setup["cell_type_key"]
        fit, reference = metrics.control_masks(
            data,
            key,
            control,
            trained_controls=trained_controls,
            split=split_controls,
            seed=seed,
            context=context_key,
        )
        if context_key is None:
            predicted = self.predict_profiles(
                data[fit], perturbations, batch_size=batch_size, seed=seed
            )
        else:  # each cell type's profiles from its own fitting controls
            contexts = data.obs[context_key].astype(str).to_numpy()
            frames = []
            for context in pd.unique(contexts[np.isin(labels, perturbations)]):
                here = [p for p in perturbations if ((labels == p) & (contexts == context)).any()]
                profiles = self.predict_profiles(
                    data[fit & (contexts == context)], here, batch_size=batch_size, seed=seed
                )
                names = ["context", "perturbation"]
                frames.append(
                    profiles.set_axis(pd.MultiIndex.from_product([[context], here], names=names))
                )
            predicted = pd.concat(frames)
        result = metrics.evaluate_heldout(
            {"PertTX": predicted},
            data,
            key,
            control,
            perturbations,
            fit_controls=fit,
            reference_controls=reference,
            train_mask=train_mask,
            baselines=baselines,
            edges=None if gene_graph is None else gene_graph.edges,
            gene_embedding=gene_embedding,
            layer=None if self._is_log_normalized else setup["layer"],
            n_top_de=n_top_de,
            seed=seed,
            separator=setup["label_separator"],
            context_key=context_key,
        )
        shared = bool((fit == reference).all())
        result.attrs["controls"] = (
            "shared: predictions and observed effects use the same control cells"
            if shared
            else f"split: predictions start from {int(fit.sum())} control cells, observed "
            f"effects are taken against {int(reference.sum())} others"
        )
        result["perturbation"] = result["perturbation"].astype(str).map(lambda p: spelled.get(p, p))
        logger.info("evaluate: controls %s", result.attrs["controls"])
        target.uns["pertx_evaluation"] = result
        return result
