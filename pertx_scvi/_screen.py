"""Virtual screen of :class:`~pertx_scvi.PertTX`: rank candidate perturbations by how far their
predicted cells move source cells towards a target state (or a phenotype).

Source cells are encoded once (``PertTXModule.embed_cells``); each module call then predicts
a chunk of candidates for every source cell (``predict_next``, then
``expected_log_normalized`` or ``mean_counts`` and the next-cell heads, as
:meth:`PertTXModule.predict <pertx_scvi.module.PertTXModule.predict>` does), so the cost is
that of the decoder and of the Monte Carlo draws, not of the transformer.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._constants import TARGET_SUM
from ._labels import DEFAULT_CONTROL_TOKENS, gene_set_matrix, parse_perturbation
from .data import cell_loader

logger = logging.getLogger(__name__)

SCORES = ("distance", "cosine", "phenotype")
# Elements (cells x genes x draws) sampled per module call: bounds the memory of a chunk.
_SAMPLES_PER_CALL = 2**24


class ScreenMixin:
    """``virtual_screen`` of :class:`~pertx_scvi.PertTX`."""

    @torch.inference_mode()
    def virtual_screen(
        self,
        source: AnnData | None = None,
        target: AnnData | str | None = None,
        candidates: Sequence[str] | None = None,
        max_order: int = 1,
        *,
        target_key: str | None = None,
        phenotype: str | None = None,
        maximize: bool = True,
        score: str = "auto",
        max_pairs: int = 20_000,
        profile: str = "expected",
        max_cells: int | None = 128,
        n_draws: int = 2,
        n_boot: int = 200,
        batch_size: int = 256,
        seed: int = 0,
        progress_bar: bool = False,
    ) -> pd.DataFrame:
        """Rank candidate perturbations by how far they move ``source`` cells towards a target.

        Every candidate is predicted for every source cell (the source cells are encoded once,
        many candidates are decoded per pass); its predicted effect is compared with the
        observed difference between the target cells and the source cells.

        Parameters
        ----------
        source
            Cells to perturb, with the training genes (counts in the registered layer); by
            default the control cells of the registered AnnData.
        target
            The state to reach: an AnnData of target cells (same genes, counts), or a label of
            ``target_key`` in the registered AnnData (``"STAT1"``: the cells of that
            perturbation; spellings of one gene set match). ``None`` needs ``phenotype``.
        candidates
            Perturbation labels to rank (genes such as ``"STAT1"``, combinations ``"A+B"``).
            Default: every gene the model can embed (the perturbed genes of training, and with a
            gene graph or gene table every gene of it). Unknown names are an error naming them.
        max_order
            1: the candidates as given. 2: also every pair of the single-gene candidates (only
            among the best-ranked singles when there would be more than ``max_pairs`` pairs).
        target_key
            ``obs`` column of the registered AnnData that ``target`` names a group of; default
            the perturbation column of setup.
        phenotype
            A phenotype key of setup (``phenotype_keys``): the model's predicted change of that
            score for the perturbed cells is reported (``phenotype_shift``), and ranks the
            candidates when there is no target. Needs a model with a next-cell phenotype head.
        maximize
            With ``score="phenotype"``: rank the largest increase first (``False``: the largest
            decrease).
        score
            The ranking score, higher is better (all scores available are returned as columns):

            - ``"distance"`` (default with a target): the share of the distance to the target
              that the perturbation closes, ``1 - ||Δt - Δp|| / ||Δt||``, with ``Δt`` the
              observed target mean minus the observed source mean and ``Δp`` the predicted mean
              minus the predicted unperturbed mean (mean profiles of log1p(normalize_total 1e4)
              expression over all genes). 1: the predicted cells reach the target mean; 0: no
              closer than the sources; negative: further away.
            - ``"cosine"``: cosine of ``Δp`` with ``Δt`` (direction only, whatever the size).
            - ``"phenotype"`` (default without a target): the predicted change of ``phenotype``.
        max_pairs
            Most pairs screened with ``max_order=2``.
        profile
            How a predicted cell's log-normalised profile is computed.
            ``"expected"`` (default): E[log1p(counts / total * 1e4)] under the model's
            likelihood, estimated from ``n_draws`` count draws per cell
            (:meth:`~pertx_scvi.module.PertTXModule.expected_log_normalized`): the scale of
            the observed target, as in :meth:`predict_perturbation`. ``"mean"``: log1p of the
            predicted mean count per 1e4, no Monte Carlo: several times faster on wide gene
            panels and without sampling noise, but above the observed scale for sparse genes
            (Jensen's inequality); the bias is shared by every candidate and the unperturbed
            reference, so rankings are close.
        max_cells
            Source cells used (a seeded random subset of larger sources); ``None``: all.
        n_draws
            Monte Carlo draws per predicted cell of the expected log-normalised expression
            (:meth:`~pertx_scvi.module.PertTXModule.expected_log_normalized`).
        n_boot
            Bootstrap resamples of the source cells behind the uncertainty columns.
        batch_size
            Cells per encoder pass.
        seed
            Seed of the cell subset, the Monte Carlo draws and the bootstrap.
        progress_bar
            Show a progress bar over chunks of candidates.

        Returns
        -------
        DataFrame, best first, one row per candidate: ``rank``, ``perturbation``, ``n_genes``
        (its order), ``trained`` (all of its genes were perturbed in training), ``score``,
        ``score_se`` (bootstrap standard error over the source cells: it covers the spread of
        the source cells and the Monte Carlo noise of the prediction, not the model's own
        error nor the sampling of the target cells), ``score_low`` / ``score_high`` (95 %
        normal interval, ``score ± 1.96 score_se``), then every score available: ``distance_gain``, ``cosine``,
        ``effect_norm`` (``||Δp||``) with a target, ``phenotype_shift`` with ``phenotype``.
        ``.attrs`` holds the settings, ``n_source_cells``, ``n_target_cells``, ``target_norm``
        (``||Δt||``), ``seconds`` and ``candidates_per_second``.

        Examples
        --------
        >>> ranking = model.virtual_screen(controls, target="STAT1")
        >>> ranking.head()
        >>> px.pl.virtual_screen(ranking, top=20)
        """
        started = time.perf_counter()
        self._check_if_trained(warn=True)
        setup = self.registry_["setup_args"]
        if max_order not in (1, 2):
            raise ValueError(f"max_order must be 1 (singles) or 2 (singles and pairs): {max_order}")
        if profile not in ("expected", "mean"):
            raise ValueError(f"profile must be 'expected' or 'mean', got {profile!r}")
        if n_draws < 1 or n_boot < 2:
            raise ValueError(f"n_draws must be >= 1 and n_boot >= 2, got {n_draws}, {n_boot}")
        if max_cells is not None and max_cells < 2:
            raise ValueError(f"max_cells must be >= 2 or None, got {max_cells}")
        if target is None and phenotype is None:
            raise ValueError(
                "virtual_screen needs a target (an AnnData of target cells or a label of "
                "target_key) or a phenotype= score to rank candidates by"
            )
        score = _resolve_score(score, target is not None, phenotype is not None)
        phenotype_column = self._screen_phenotype_column(phenotype)
        rng = np.random.default_rng(seed)

        # ---- source and target cells ----------------------------------------------------------
        if source is None:
            source = self._screen_group(
                setup["perturbation_key"], str(setup["control_group"]), "source"
            )
        _check_anndata(source, "source")
        if source.n_obs < 2:
            raise ValueError(f"source has {source.n_obs} cell(s); at least 2 are needed")
        target_delta, n_target = None, 0
        if target is not None:
            # Observed means over every source and target cell; predictions use the subset.
            source_mean = self._screen_mean_values(source, batch_size)
        if max_cells is not None and source.n_obs > max_cells:
            source = source[np.sort(rng.choice(source.n_obs, max_cells, replace=False))]
        n_src = source.n_obs
        if target is not None:
            if isinstance(target, str):
                key = setup["perturbation_key"] if target_key is None else target_key
                target = self._screen_group(key, target, "target")
            elif not isinstance(target, AnnData):
                raise TypeError(
                    f"target must be an AnnData or a label (str), got {type(target).__name__}"
                )
            n_target = target.n_obs
            if n_target == 0:
                raise ValueError("target has no cells")
            target_delta = self._screen_mean_values(target, batch_size)
            target_delta -= source_mean
            if not np.linalg.norm(target_delta) > 0:
                raise ValueError("target and source cells have the same mean profile: no target")

        # ---- candidates ----------------------------------------------------------------------
        labels, gene_sets = self._screen_candidates(candidates)

        # ---- encode the sources once; the unperturbed prediction is the reference ------------
        self.module.eval()
        device = self.device
        z, library = [], []
        for batch in cell_loader(self._registered_cells(source), batch_size):
            x = batch.to(device)
            z.append(self.module.embed_cells(x))
            library.append(self.module.library(x))
        z, library = torch.cat(z), torch.cat(library)
        weights = torch.from_numpy(
            rng.multinomial(n_src, np.full(n_src, 1.0 / n_src), size=n_boot).astype(np.float32)
            / n_src
        ).to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        context = _ScreenContext(
            module=self.module,
            vocabulary=pd.Index(self.perturbation_genes),
            z=z,
            library=library,
            weights=weights,
            generator=generator,
            n_draws=n_draws,
            profile=profile,
            target_delta=None if target_delta is None else torch.from_numpy(target_delta).to(z),
            phenotype_column=phenotype_column,
        )
        context.set_reference(torch.full((1, 1), -1, dtype=torch.long, device=device))

        results = context.score_all(labels, gene_sets, progress_bar)
        pairs_from = None
        if max_order == 2:
            singles = [i for i, genes in enumerate(gene_sets) if len(genes) == 1]
            order = np.argsort(-_ranking_values(results, score, maximize)[singles], kind="stable")
            ranked = [singles[i] for i in order]
            # The most singles whose pairs fit in max_pairs: k (k - 1) / 2 <= max_pairs.
            k = min(len(ranked), (1 + math.isqrt(1 + 8 * max(int(max_pairs), 0))) // 2)
            pairs_from = k
            if k < len(ranked):
                logger.info(
                    "virtual_screen: pairs of the %d best-ranked of %d single genes (max_pairs=%d)",
                    k,
                    len(ranked),
                    max_pairs,
                )
            seen = {tuple(g) for g in gene_sets}
            pair_sets = []
            for a, b in itertools.combinations(sorted(ranked[:k]), 2):
                genes = tuple(sorted((gene_sets[a][0], gene_sets[b][0])))
                if genes not in seen:
                    seen.add(genes)
                    pair_sets.append(genes)
            if pair_sets:
                separator = setup["label_separator"]
                pair_labels = [separator.join(genes) for genes in pair_sets]
                more = context.score_all(pair_labels, pair_sets, progress_bar)
                labels, gene_sets = labels + pair_labels, gene_sets + pair_sets
                results = {name: np.concatenate([results[name], more[name]]) for name in results}

        table = self._screen_table(labels, gene_sets, results, score, maximize)
        seconds = time.perf_counter() - started
        table.attrs.update(
            {
                "score": score,
                "score_definition": _DEFINITIONS[score],
                "maximize": bool(maximize) if score == "phenotype" else True,
                "phenotype": phenotype,
                "n_candidates": len(table),
                "n_source_cells": int(n_src),
                "n_target_cells": int(n_target),
                "target_norm": float("nan")
                if target_delta is None
                else float(np.linalg.norm(target_delta)),
                "pairs_from_top_singles": pairs_from,
                "profile": profile,
                "n_draws": int(n_draws),
                "n_boot": int(n_boot),
                "seed": int(seed),
                "seconds": round(seconds, 3),
                "candidates_per_second": round(len(table) / max(seconds, 1e-9), 1),
            }
        )
        logger.info(
            "virtual_screen: %d candidates from %d source cells in %.1f s (%.0f per second)",
            len(table),
            n_src,
            seconds,
            len(table) / max(seconds, 1e-9),
        )
        return table

    # ---- helpers -------------------------------------------------------------------------------
    def _screen_mean_values(self, adata: AnnData, batch_size: int) -> np.ndarray:
        """Mean log1p(normalize_total 1e4) profile (float64) of observed cells, read through
        the registry (:meth:`_registered_cells`) one batch at a time."""
        total = torch.zeros(len(self._registered_var_names()), dtype=torch.float64)
        for batch in cell_loader(self._registered_cells(adata), batch_size):
            values = self.module.input_values(batch.to(self.device))[0]
            total += values.double().sum(0).cpu()
        return (total / max(adata.n_obs, 1)).numpy()

    def _screen_phenotype_column(self, phenotype: str | None) -> int | None:
        if phenotype is None:
            return None
        keys = [str(k) for k in (self.registry_["setup_args"]["phenotype_keys"] or [])]
        if phenotype not in keys:
            raise ValueError(
                f"phenotype {phenotype!r} is not a phenotype score of this model "
                f"(phenotype_keys at setup: {keys or 'none'})"
            )
        if not self.module.has_phenotype_head(next_cell=True):
            raise ValueError(
                "this model was built with next_phenotype_weight=0: it cannot predict the "
                "phenotype of perturbed cells"
            )
        return keys.index(phenotype)

    def _screen_group(self, key: str, label: str, what: str) -> AnnData:
        """The cells of the registered AnnData whose ``obs[key]`` is ``label`` (a view)."""
        adata = self.adata
        if key not in adata.obs.columns:
            raise KeyError(f"{what}: column {key!r} not found in the registered adata.obs")
        values = adata.obs[key].astype(str)
        setup = self.registry_["setup_args"]
        if key == setup["perturbation_key"]:  # spellings of one gene set are one label
            controls = (*DEFAULT_CONTROL_TOKENS, str(setup["control_group"]))
            separator = setup["label_separator"]
            wanted = parse_perturbation(str(label), separator, controls)
            categories = pd.unique(values)
            match = {c for c in categories if parse_perturbation(c, separator, controls) == wanted}
            mask = values.isin(match).to_numpy()
        else:
            mask = (values == str(label)).to_numpy()
        if not mask.any():
            shown = sorted(pd.unique(values))[:10]
            raise ValueError(
                f"{what}: no cells of {label!r} in the registered adata.obs[{key!r}] "
                f"(labels include {shown})"
            )
        return adata[mask]

    def _screen_candidates(
        self, candidates: Sequence[str] | None
    ) -> tuple[list[str], list[tuple[str, ...]]]:
        """Labels and their gene sets; unknown or unembeddable genes are one error naming them."""
        setup = self.registry_["setup_args"]
        vocabulary = pd.Index(self.perturbation_genes)
        known = self.module.perturbation_encoder.can_embed().cpu().numpy().astype(bool)
        if candidates is None:
            genes = [str(g) for g in vocabulary[known]]
            if not genes:
                raise ValueError("the model can embed no perturbation gene: is it trained?")
            return genes, [(g,) for g in genes]
        if isinstance(candidates, str):
            candidates = [candidates]
        labels = [str(c) for c in candidates]
        if not labels:
            raise ValueError("candidates is empty: name at least one perturbation, or pass None")
        controls = (*DEFAULT_CONTROL_TOKENS, str(setup["control_group"]))
        gene_sets = [parse_perturbation(p, setup["label_separator"], controls) for p in labels]
        empty = [p for p, genes in zip(labels, gene_sets, strict=True) if not genes]
        if empty:
            raise ValueError(f"candidate(s) {empty} name no gene (control or empty labels)")
        positions = {g: vocabulary.get_loc(g) for g in vocabulary}
        unknown = sorted({g for genes in gene_sets for g in genes if g not in positions})
        untrained = sorted(
            {g for genes in gene_sets for g in genes if g in positions and not known[positions[g]]}
        )
        if unknown or untrained:
            parts = []
            if unknown:
                parts.append(f"unknown to the model: {_shorten(unknown)}")
            if untrained:
                parts.append(
                    f"never perturbed in training (no graph / table to embed them): "
                    f"{_shorten(untrained)}"
                )
            raise ValueError(
                "cannot screen candidate gene(s) " + "; ".join(parts) + ". candidates=None "
                "screens every gene the model can embed"
            )
        unique: dict[tuple[str, ...], str] = {}
        for label, genes in zip(labels, gene_sets, strict=True):
            unique.setdefault(genes, label)  # the first spelling names a repeated gene set
        return list(unique.values()), list(unique.keys())

    def _screen_table(
        self,
        labels: list[str],
        gene_sets: list[tuple[str, ...]],
        results: dict[str, np.ndarray],
        score: str,
        maximize: bool,
    ) -> pd.DataFrame:
        vocabulary = pd.Index(self.perturbation_genes)
        trained = self.module.perturbation_encoder.trained_genes.cpu().numpy().astype(bool)
        column = {"distance": "distance_gain", "cosine": "cosine", "phenotype": "phenotype_shift"}
        sign = -1.0 if score == "phenotype" and not maximize else 1.0
        values = sign * results[column[score]]
        se = results[f"{column[score]}_boot"].std(1, ddof=1)
        table = pd.DataFrame(
            {
                "perturbation": labels,
                "n_genes": [len(g) for g in gene_sets],
                "trained": [
                    bool(trained[vocabulary.get_indexer(list(g))].all()) for g in gene_sets
                ],
                "score": values,
                "score_se": se,
                # Normal interval: percentiles of a distance are biased by the resampling noise
                # (a norm of noisy vectors is inflated) and can miss the score itself.
                "score_low": values - 1.96 * se,
                "score_high": values + 1.96 * se,
            }
        )
        for name in ("distance_gain", "cosine", "effect_norm", "phenotype_shift"):
            if name in results:
                table[name] = results[name]
        table = table.sort_values("score", ascending=False, kind="stable", ignore_index=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        return table


_DEFINITIONS = {
    "distance": "1 - ||dt - dp|| / ||dt||: share of the distance from the source mean to the "
    "target mean closed by the predicted effect (mean log1p(CP10k) profiles, all genes)",
    "cosine": "cosine of the predicted effect dp with the observed target effect dt",
    "phenotype": "predicted change of the phenotype score (perturbed minus unperturbed "
    "prediction, mean over source cells)",
}


def _resolve_score(score: str, has_target: bool, has_phenotype: bool) -> str:
    if score == "auto":
        return "distance" if has_target else "phenotype"
    if score not in SCORES:
        raise ValueError(f"score must be 'auto' or one of {SCORES}, got {score!r}")
    if score in ("distance", "cosine") and not has_target:
        raise ValueError(f"score={score!r} needs a target")
    if score == "phenotype" and not has_phenotype:
        raise ValueError("score='phenotype' needs phenotype=<a phenotype key of setup>")
    return score


def _ranking_values(results: dict[str, np.ndarray], score: str, maximize: bool) -> np.ndarray:
    column = {"distance": "distance_gain", "cosine": "cosine", "phenotype": "phenotype_shift"}
    values = results[column[score]]
    return -values if score == "phenotype" and not maximize else values


def _check_anndata(adata, what: str) -> None:
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}")


def _shorten(names: list[str], n: int = 10) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


class _ScreenContext:
    """Encoded source cells and everything shared by the chunks of one screen."""

    def __init__(
        self,
        module,
        vocabulary: pd.Index,
        z: torch.Tensor,
        library: torch.Tensor,
        weights: torch.Tensor,
        generator: torch.Generator,
        n_draws: int,
        profile: str,
        target_delta: torch.Tensor | None,
        phenotype_column: int | None,
    ):
        self.module, self.z, self.library, self.weights = module, z, library, weights
        self.generator, self.n_draws, self.profile = generator, n_draws, profile
        self.target_delta, self.phenotype_column = target_delta, phenotype_column
        self.vocabulary = vocabulary
        self.n_src = z.shape[0]
        draws = n_draws if profile == "expected" else 1
        self.chunk = max(1, _SAMPLES_PER_CALL // (self.n_src * module.n_genes * draws))

    def _predict(self, gene_sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-cell log-normalised profiles (C, S, G) and phenotype (C, S) or None."""
        n, module = gene_sets.shape[0], self.module
        library = self.library.repeat(n, 1)
        predicted = module.predict_next(
            self.z.repeat(n, 1), gene_sets.repeat_interleave(self.n_src, 0)
        )
        output, dropout = predicted["output"], predicted.get("dropout_logits")
        if self.profile == "mean":
            mean = module.mean_counts(output, library, dropout)
            values = torch.log1p(mean / library * TARGET_SUM)
        else:
            values = module.expected_log_normalized(
                output, library, dropout, self.n_draws, self.generator
            )
        phenotype = None
        if self.phenotype_column is not None:
            heads = module.predict_heads(predicted["next_z"], next_cell=True)
            phenotype = heads["phenotype"][:, self.phenotype_column].view(n, self.n_src)
        return values.view(n, self.n_src, -1), phenotype

    def set_reference(self, gene_sets: torch.Tensor) -> None:
        """The unperturbed prediction (empty gene set): mean and bootstrap means."""
        expected, phenotype = self._predict(gene_sets)
        self.ref_cells = expected[0]  # (S, G)
        self.ref_phenotype = None if phenotype is None else phenotype[0]

    def score_all(
        self, labels: list[str], gene_sets: list[tuple[str, ...]], progress_bar: bool
    ) -> dict[str, np.ndarray]:
        vocabulary_sets = self._positions(gene_sets)
        starts = range(0, len(labels), self.chunk)
        if progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(
                starts,
                total=math.ceil(len(labels) / self.chunk),
                unit="chunk",
                desc=f"screening {len(labels)} candidates",
            )
        parts: dict[str, list[np.ndarray]] = {}
        for start in starts:
            chunk = vocabulary_sets[start : start + self.chunk]
            for name, value in self._score_chunk(chunk).items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def _positions(self, gene_sets: list[tuple[str, ...]]) -> torch.Tensor:
        """Padded vocabulary positions (n, max_set_size) of ``gene_sets``, -1 = padding."""
        matrix = gene_set_matrix(gene_sets, self.vocabulary)
        return torch.from_numpy(matrix).to(self.z.device)

    def _score_chunk(self, gene_sets: torch.Tensor) -> dict[str, np.ndarray]:
        expected, phenotype = self._predict(gene_sets)
        delta_cells = expected - self.ref_cells  # (C, S, G): paired on the same source cells
        out: dict[str, torch.Tensor] = {}
        if self.target_delta is not None:
            delta = delta_cells.mean(1)  # (C, G)
            boot = torch.einsum("bs,csg->cbg", self.weights, delta_cells)  # (C, B, G)
            target = self.target_delta
            norm = target.norm()
            for suffix, d in (("", delta), ("_boot", boot)):
                d_norm = d.norm(dim=-1)
                out[f"distance_gain{suffix}"] = 1.0 - (target - d).norm(dim=-1) / norm
                out[f"cosine{suffix}"] = (d @ target) / (d_norm * norm).clamp(min=1e-12)
                out[f"effect_norm{suffix}"] = d_norm
        if phenotype is not None:
            shift = phenotype - self.ref_phenotype  # (C, S)
            out["phenotype_shift"] = shift.mean(1)
            out["phenotype_shift_boot"] = shift @ self.weights.T  # (C, B)
        return {name: value.double().cpu().numpy() for name, value in out.items()}
