"""Simple perturbation-prediction baselines sharing one interface.

Every baseline is fitted on raw counts (normalised internally, on a copy, to
log1p(normalize_total 1e4)) and predicts mean log1p-normalised profiles::

    model = TrainMean().fit(adata_train, "perturbation", "control")
    pred = model.predict(["STAT1", "A+B"])   # DataFrame: labels x genes

Nothing here imports torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._utils import (
    DEFAULT_CONTROL_TOKENS,
    DEFAULT_SEPARATOR,
    canonical_labels,
    check_labels,
    control_tokens_for,
    group_stats,
    log_normalize,
    parse_perturbation,
)

__all__ = [
    "Baseline",
    "ControlMean",
    "TrainMean",
    "Additive",
    "Linear",
    "GraphNeighbourAverage",
    "KnockdownPrior",
    "TrainingProfiles",
    "training_profiles",
    "go_gene_embedding",
    "fit_baselines",
]


# --------------------------------------------------------------------------------------------
# pseudobulk of the training data
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingProfiles:
    """Mean log1p-normalised profiles of a training set.

    Attributes
    ----------
    genes
        Gene names (columns).
    control_mean
        Mean profile of the control cells, shape (genes,).
    means
        Mean profile per training perturbation; index = canonical label (member genes sorted and
        joined by the separator, so ``"B+A"`` and ``"A+B"`` are one row), columns = genes.
    n_cells
        Number of cells per row of ``means``.
    control_group, separator, control_tokens
        How labels were parsed (``control_tokens`` includes ``control_group``).
    """

    genes: pd.Index
    control_mean: np.ndarray
    means: pd.DataFrame
    n_cells: pd.Series
    control_group: str
    separator: str
    control_tokens: tuple[str, ...]


def training_profiles(
    adata_train: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    layer: str | None = None,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> TrainingProfiles:
    """Normalise a copy of the counts and average them per perturbation (and control).

    Labels that parse to no gene (``control_group``, ``"ctrl"``, ``"ctrl+ctrl"``) are control.
    """
    labels = check_labels(adata_train, perturbation_key, control_group)
    tokens = control_tokens_for(control_group, control_tokens)
    canon = canonical_labels(labels, separator, tokens)
    groups = sorted({c for c in pd.unique(canon) if c})
    X = log_normalize(adata_train, layer)
    mean, _, n = group_stats(X, canon, ["", *groups])
    genes = pd.Index(adata_train.var_names.astype(str), name="gene")
    means = pd.DataFrame(mean[1:], index=pd.Index(groups, name="perturbation"), columns=genes)
    return TrainingProfiles(
        genes=genes,
        control_mean=mean[0],
        means=means,
        n_cells=pd.Series(n[1:].astype(int), index=means.index),
        control_group=str(control_group),
        separator=separator,
        control_tokens=tokens,
    )


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class Baseline:
    """Interface of the baselines: ``fit`` on raw counts, ``predict`` mean profiles.

    Parameters
    ----------
    separator
        Separator of combination labels (``"A+B"``).
    control_tokens
        Tokens meaning "no perturbation" in labels (``"ctrl"``); the ``control_group`` given to
        :meth:`fit` is added.

    Attributes
    ----------
    genes_
        Gene names (set by ``fit``, like every attribute with a trailing underscore).
    control_mean_
        Control mean profile (Series).
    deltas_
        Δ of every training perturbation (canonical label x genes).
    single_deltas_
        Rows of ``deltas_`` for single-gene perturbations, indexed by gene.
    mean_delta_
        Average of ``deltas_`` over training perturbations (Series).
    """

    name = "baseline"

    def __init__(
        self,
        *,
        separator: str = DEFAULT_SEPARATOR,
        control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
    ) -> None:
        self.separator = separator
        self.control_tokens = tuple(control_tokens)

    # -- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        adata_train: ad.AnnData,
        perturbation_key: str,
        control_group: str,
        layer: str | None = None,
    ) -> Baseline:
        """Fit on raw counts.

        Parameters
        ----------
        adata_train
            Training cells (control cells and training perturbations), raw counts in ``X`` or
            ``layers[layer]``. Not modified (normalisation works on a copy).
        perturbation_key
            Column of ``obs`` with perturbation labels.
        control_group
            Label of the control cells.
        layer
            Layer with raw counts (``None``: ``X``).

        Returns
        -------
        Baseline
            ``self``.
        """
        prof = training_profiles(
            adata_train,
            perturbation_key,
            control_group,
            layer,
            self.separator,
            self.control_tokens,
        )
        return self.fit_profiles(prof)

    def fit_profiles(self, profiles: TrainingProfiles) -> Baseline:
        """Fit from precomputed :class:`TrainingProfiles` (shared by :func:`fit_baselines`)."""
        self.profiles_ = profiles
        self.genes_ = profiles.genes
        self._tokens = profiles.control_tokens
        self.separator = profiles.separator
        self.control_mean_ = pd.Series(profiles.control_mean, index=self.genes_, name="control")
        self.deltas_ = profiles.means - profiles.control_mean[None, :]
        single = [k for k in self.deltas_.index if self.separator not in k]
        self.single_deltas_ = self.deltas_.loc[single]
        if len(self.deltas_):
            self.mean_delta_ = self.deltas_.mean(axis=0).rename("mean_delta")
        else:
            self.mean_delta_ = pd.Series(np.nan, index=self.genes_, name="mean_delta")
        self._fit()
        return self

    def _fit(self) -> None:
        """Hook for subclasses, called at the end of :meth:`fit_profiles`."""

    def _require_perturbations(self) -> None:
        if len(self.deltas_) == 0:
            raise ValueError(
                f"{type(self).__name__} needs at least one perturbation besides control "
                f"{self.profiles_.control_group!r} in the training data"
            )

    # -- prediction ---------------------------------------------------------------------------
    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        raise NotImplementedError

    def predict(self, perturbations: Sequence[str]) -> pd.DataFrame:
        """Predict mean log1p-normalised profiles.

        Parameters
        ----------
        perturbations
            Labels, single genes or combinations (``"A+B"``, ``"A+ctrl"``); a control label
            predicts the control mean.

        Returns
        -------
        pandas.DataFrame
            Rows = the labels as given, columns = genes.
        """
        if not hasattr(self, "genes_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit() first")
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        labels = [str(p) for p in perturbations]
        if len(set(labels)) != len(labels):
            dup = sorted({p for p in labels if labels.count(p) > 1})
            raise ValueError(f"perturbations listed more than once: {dup}")
        ctrl = self.control_mean_.to_numpy()
        out = np.empty((len(labels), len(self.genes_)))
        for i, lb in enumerate(labels):
            genes = parse_perturbation(lb, self.separator, self._tokens)
            out[i] = ctrl if not genes else ctrl + self._predict_delta(genes, lb)
        return pd.DataFrame(out, index=pd.Index(labels, name="perturbation"), columns=self.genes_)

    def __repr__(self) -> str:
        fitted = "fitted" if hasattr(self, "genes_") else "not fitted"
        return f"{type(self).__name__}({fitted})"


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------


class ControlMean(Baseline):
    """No change: every perturbation is predicted as the control mean (``Δ̂ = 0``)."""

    name = "control_mean"

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        return np.zeros(len(self.genes_))


class TrainMean(Baseline):
    """Mean perturbation effect: ``x̂ = c + (1/|T|) Σ_{t ∈ T} Δ_t`` for every perturbation.

    ``T`` = training perturbations (combinations included), each weighted equally. The
    prediction equals :func:`~pertx_scvi.metrics.perturbed_mean_profile` of the training data.
    """

    name = "train_mean"

    def _fit(self) -> None:
        self._require_perturbations()

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        return self.mean_delta_.to_numpy()


class Additive(Baseline):
    """Additive model: ``x̂_{A+B} = c + Δ_A + Δ_B`` (sum over member genes, in log space).

    ``Δ_g`` is the Δ of the training perturbation with ``g`` alone. A member gene never perturbed
    alone in training falls back to the train-mean Δ (so an unseen single gene gets the
    train-mean prediction, and ``A+B`` with only ``A`` seen gets ``c + Δ_A + Δ̄``). The sum is not
    clipped at 0, so a prediction can go slightly below 0 for genes with strong decreases.
    """

    name = "additive"

    def _fit(self) -> None:
        self._require_perturbations()

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        fallback = self.mean_delta_.to_numpy()
        total = np.zeros(len(self.genes_))
        for g in genes:
            total += (
                self.single_deltas_.loc[g].to_numpy()
                if g in self.single_deltas_.index
                else fallback
            )
        return total


class Linear(Baseline):
    """Linear model with ridge penalty (Ahlmann-Eltze et al., Nat Methods 2025).

    With ``Y`` (genes x training perturbations) the mean training profiles and ``b`` their row
    means, the model is ``Y ≈ G W Pᵀ + b`` where

    * ``G`` (genes x K) = top-``K`` left singular vectors (PCA gene factors) of ``Y - b``;
    * ``P`` (perturbations x D) = perturbation embeddings: the row of ``gene_embedding`` for
      each member gene, summed over the members of a combination; genes absent from the table
      get a zero embedding;
    * ``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹`` (ridge ``λ`` on both sides).

    Prediction: ``x̂_p = G W p + b``. A perturbation with zero embedding is predicted as ``b``,
    the train-mean prediction. Without ``gene_embedding`` the model uses the paper's
    "training data" embedding: ``P``'s gene table is ``G`` itself (the PCA loadings of the
    measured genes), so only targets that are measured genes get a non-zero embedding.

    Parameters
    ----------
    gene_embedding
        DataFrame genes x dims (e.g. :func:`go_gene_embedding`), or ``None`` (see above).
    n_components
        ``K``, the number of PCA gene factors (capped by the rank of ``Y - b``).
    ridge
        Ridge penalty ``λ`` (the paper's default 0.1).
    """

    name = "linear"

    def __init__(
        self,
        gene_embedding: pd.DataFrame | None = None,
        n_components: int = 10,
        ridge: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if gene_embedding is not None:
            if not isinstance(gene_embedding, pd.DataFrame):
                raise ValueError("gene_embedding must be a DataFrame (genes x dims)")
            values = gene_embedding.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError("gene_embedding contains NaN or infinite values")
            if gene_embedding.index.has_duplicates:
                dup = gene_embedding.index[gene_embedding.index.duplicated()].unique()
                raise ValueError(f"gene_embedding has duplicated genes, e.g. {list(dup[:5])}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.gene_embedding = gene_embedding
        self.n_components = int(n_components)
        self.ridge = float(ridge)

    def _embed(self, genes: Iterable[str]) -> np.ndarray:
        idx = self._emb_index.get_indexer(list(genes))
        idx = idx[idx >= 0]
        return self._emb_values[idx].sum(axis=0)

    def _fit(self) -> None:
        self._require_perturbations()
        Y = self.profiles_.means.to_numpy(dtype=np.float64).T  # genes x perturbations
        b = Y.mean(axis=1)
        Yc = Y - b[:, None]
        U, S, _ = np.linalg.svd(Yc, full_matrices=False)
        rank = int(np.sum(S > (S[0] if S.size else 0.0) * 1e-10)) if S.size and S[0] > 0 else 0
        k = min(self.n_components, rank)
        G = U[:, :k]
        if self.gene_embedding is None:
            emb = pd.DataFrame(G, index=self.genes_)
            self.embedding_source_ = "pca"
        else:
            emb = self.gene_embedding
            self.embedding_source_ = "table"
        self._emb_index = pd.Index(emb.index.astype(str))
        self._emb_values = emb.to_numpy(dtype=np.float64)
        d = self._emb_values.shape[1]
        P = np.zeros((Y.shape[1], d))
        for j, key in enumerate(self.profiles_.means.index):
            P[j] = self._embed(key.split(self.separator))
        self.perturbation_embedding_ = pd.DataFrame(P, index=self.profiles_.means.index)
        lam = self.ridge
        left = np.linalg.solve(G.T @ G + lam * np.eye(k), G.T @ Yc @ P) if k else np.zeros((0, d))
        right = P.T @ P + lam * np.eye(d)
        # W = left @ right⁻¹; right is symmetric, so solve rightᵀ Wᵀ = leftᵀ
        W = np.linalg.lstsq(right, left.T, rcond=None)[0].T if d else np.zeros((k, 0))
        self.G_ = G
        self.W_ = W
        self.b_ = b
        embedded = np.abs(P).sum(axis=1) > 0
        self.n_embedded_training_perturbations_ = int(embedded.sum())

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        p = self._embed(genes)
        return self.b_ + self.G_ @ (self.W_ @ p) - self.control_mean_.to_numpy()


class GraphNeighbourAverage(Baseline):
    """Weighted average of the training Δ of a gene's graph neighbours.

    The graph is used undirected (each edge both ways; for a pair listed twice the larger
    weight is kept; self-loops are dropped). For a perturbed gene ``g`` with neighbours ``N(g)``
    among the genes perturbed alone in training:

    ``Δ̂_g = Σ_{v ∈ N(g)} w_gv Δ_v / Σ_{v ∈ N(g)} w_gv``

    and ``Δ̂_g = Δ̄`` (train-mean Δ) when ``N(g)`` is empty. A combination sums the member
    genes' ``Δ̂``. With ``use_self=True`` (default) a member gene that was itself perturbed
    alone in training contributes its own Δ (relevant for combinations only: held-out single
    genes are never in training).

    Parameters
    ----------
    edges
        DataFrame with columns ``source``, ``target`` and optionally a weight column.
    weight_col
        Weight column; default ``"weight"`` if present, else ``"importance"`` (GEARS ``go.csv``
        format) if present, else all weights 1. Weights must be finite and >= 0.
    use_self
        See above.
    """

    name = "graph_neighbour"

    def __init__(
        self,
        edges: pd.DataFrame,
        weight_col: str | None = None,
        use_self: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(edges, pd.DataFrame):
            raise ValueError("edges must be a DataFrame with columns 'source' and 'target'")
        for col in ("source", "target"):
            if col not in edges.columns:
                raise ValueError(f"edges lacks column {col!r} (columns: {list(edges.columns)})")
        if weight_col is None:
            weight_col = next((c for c in ("weight", "importance") if c in edges.columns), None)
        elif weight_col not in edges.columns:
            raise ValueError(f"weight_col {weight_col!r} is not a column of edges")
        w = (
            np.ones(len(edges))
            if weight_col is None
            else pd.to_numeric(edges[weight_col], errors="coerce").to_numpy(dtype=np.float64)
        )
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"edge weights ({weight_col!r}) must be finite and >= 0")
        self._src = edges["source"].astype(str).to_numpy()
        self._tgt = edges["target"].astype(str).to_numpy()
        self._w = w
        self.weight_col = weight_col
        self.use_self = use_self

    def _fit(self) -> None:
        self._require_perturbations()
        trained = pd.Index(self.single_deltas_.index)
        q = np.concatenate([self._src, self._tgt])
        nb = np.concatenate([self._tgt, self._src])
        w = np.concatenate([self._w, self._w])
        keep = trained.get_indexer(nb) >= 0
        keep &= q != nb
        e = pd.DataFrame({"q": q[keep], "nb": nb[keep], "w": w[keep]})
        e = e.groupby(["q", "nb"], sort=True)["w"].max().reset_index()
        self._query = pd.Index(e["q"].unique())
        rows = self._query.get_indexer(e["q"])
        cols = trained.get_indexer(e["nb"])
        self._adj = sparse.csr_matrix(
            (e["w"].to_numpy(), (rows, cols)), shape=(len(self._query), len(trained))
        )
        self._trained = trained

    def neighbours(self, gene: str) -> pd.Series:
        """Weights of ``gene``'s neighbours that were perturbed alone in training."""
        i = self._query.get_indexer([gene])[0]
        if i < 0:
            return pd.Series(dtype=np.float64, name=gene)
        row = self._adj.getrow(i)
        return pd.Series(row.data, index=list(self._trained[row.indices]), name=gene)

    def _gene_delta(self, g: str) -> np.ndarray:
        if self.use_self and g in self.single_deltas_.index:
            return self.single_deltas_.loc[g].to_numpy()
        i = self._query.get_indexer([g])[0]
        if i >= 0:
            row = self._adj.getrow(i)
            total = row.data.sum()
            if total > 0:
                d = self.single_deltas_.to_numpy()[row.indices]
                return (row.data[:, None] * d).sum(axis=0) / total
        return self.mean_delta_.to_numpy()

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        return np.sum([self._gene_delta(g) for g in genes], axis=0)


class KnockdownPrior(Baseline):
    """A baseline plus the prior that a perturbation changes its own target gene.

    PertTX's decoder has a term for the perturbed gene's own expression; this gives a
    baseline the same prior, so that a model is not credited for it alone. The prediction is
    ``base``'s, except that every measured target gene ``g`` of the perturbation is set to

    ``x̂_g = max(c_g + δ, 0)``, with ``δ = mean over training perturbations t and their
    measured target genes h of Δ_t,h``

    (the average own-gene change of the training perturbations; negative for knockouts and
    knock-downs, positive where the training data show activation, as in CRISPRa). Without
    any measured target gene in training, the prediction is ``base``'s.

    Parameters
    ----------
    base
        The baseline to add the prior to (e.g. :class:`TrainMean`).
    """

    def __init__(self, base: Baseline) -> None:
        super().__init__(separator=base.separator, control_tokens=base.control_tokens)
        self.base = base
        self.name = f"{base.name}_knockdown"

    def _fit(self) -> None:
        self.base.fit_profiles(self.profiles_)
        changes = [
            self.deltas_.at[label, gene]
            for label in self.deltas_.index
            for gene in label.split(self.separator)
            if gene in self.genes_
        ]
        self.own_gene_delta_ = float(np.mean(changes)) if changes else float("nan")
        self.n_own_gene_changes_ = len(changes)

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        delta = self.base._predict_delta(genes, label)
        if not np.isfinite(self.own_gene_delta_):
            return delta
        positions = self.genes_.get_indexer(list(genes))
        positions = positions[positions >= 0]
        if positions.size:
            delta = np.array(delta, dtype=np.float64)
            control = self.control_mean_.to_numpy()[positions]
            delta[positions] = np.maximum(control + self.own_gene_delta_, 0.0) - control
        return delta


# --------------------------------------------------------------------------------------------
# embeddings and convenience
# --------------------------------------------------------------------------------------------


def go_gene_embedding(
    gene2go_path_or_df: str | os.PathLike | pd.DataFrame,
    n_components: int = 64,
    genes: Sequence[str] | None = None,
    ontologies: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """GO gene embedding of the linear baseline: :func:`pertx_scvi.graphs.go_embedding` in its
    plain variant (binary gene x term matrix, no idf weighting, every annotation kept: no
    ontology or evidence filter unless ``ontologies`` is given).

    ``genes``: return only these genes, in this order; genes without GO annotation are left
    out (the linear baseline gives them a zero embedding). ``seed``: the SVD's start vector.
    """
    from ..graphs._go_embedding import go_embedding  # numpy / scipy / pandas only

    table = go_embedding(
        gene2go_path_or_df,
        n_components,
        ontologies=ontologies,
        exclude_evidence=None,
        idf=False,
        random_state=seed,
    )
    if genes is not None:
        wanted = pd.Index([str(g) for g in genes])
        table = table.loc[wanted[wanted.isin(table.index)]]
    return table


BASELINES: dict[str, type[Baseline]] = {
    "control_mean": ControlMean,
    "train_mean": TrainMean,
    "additive": Additive,
    "linear": Linear,
    "graph_neighbour": GraphNeighbourAverage,
}
KNOCKDOWN_SUFFIX = "_knockdown"
BASELINE_NAMES: tuple[str, ...] = (
    "control_mean",
    "train_mean",
    "train_mean_knockdown",
    "additive",
    "linear",
    "graph_neighbour",
    "graph_neighbour_knockdown",
)
"""Names of the baselines, in report order. ``<name>_knockdown`` is ``<name>`` with
:class:`KnockdownPrior`."""


def fit_baselines(
    adata_train: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    *,
    names: Sequence[str] = BASELINE_NAMES,
    edges: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
    gene_embedding: pd.DataFrame | None = None,
    layer: str | None = None,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Sequence[str] = DEFAULT_CONTROL_TOKENS,
) -> dict[str, Baseline]:
    """Fit several baselines on the same training data (normalised once).

    Parameters
    ----------
    adata_train
        Training cells, raw counts; not modified.
    perturbation_key, control_group, layer
        As in :meth:`Baseline.fit`.
    names
        Baselines to fit, among ``control_mean``, ``train_mean``, ``additive``, ``linear``,
        ``graph_neighbour`` and any of them with the suffix ``_knockdown``
        (:class:`KnockdownPrior`; :data:`BASELINE_NAMES` has ``train_mean_knockdown`` and
        ``graph_neighbour_knockdown``).
    edges
        Gene graph for ``graph_neighbour`` (columns ``source``, ``target``, optional weight),
        or a dict name -> such a table: then every graph-neighbour baseline is fitted once per
        graph and named ``<baseline>:<name>`` (e.g. ``graph_neighbour_knockdown:string``), so
        that each prior source a model uses has its own graph-neighbour bar. Without edges the
        graph-neighbour baselines are skipped with a warning.
    gene_embedding
        Gene table for ``linear`` (e.g. :func:`go_gene_embedding`). Without it ``linear`` uses
        the PCA gene loadings of the training data (only measured target genes are embedded;
        others are predicted as the train mean).
    separator, control_tokens
        Label parsing.

    Returns
    -------
    dict
        Name -> fitted baseline, in the order of ``names``; use ``b.predict(labels)`` or pass
        the dict straight to :func:`~pertx_scvi.metrics.compare`.
    """
    unknown = [n for n in names if n.removesuffix(KNOCKDOWN_SUFFIX) not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)}")
    prof = training_profiles(
        adata_train, perturbation_key, control_group, layer, separator, control_tokens
    )
    kw = {"separator": separator, "control_tokens": control_tokens}
    out: dict[str, Baseline] = {}
    graphs = edges if isinstance(edges, Mapping) else {"": edges} if edges is not None else {}
    for name in names:
        base_name = name.removesuffix(KNOCKDOWN_SUFFIX)
        if base_name == "graph_neighbour":
            if not graphs:
                warnings.warn(
                    f"fit_baselines: skipping {name!r} because no edges were given "
                    "(pass edges=DataFrame with columns source, target[, weight])",
                    UserWarning,
                    stacklevel=2,
                )
            for graph_name, table in graphs.items():
                model: Baseline = GraphNeighbourAverage(table, **kw)
                if name != base_name:
                    model = KnockdownPrior(model)
                key = f"{name}:{graph_name}" if graph_name else name
                out[key] = model.fit_profiles(prof)
            continue
        model = (
            Linear(gene_embedding=gene_embedding, **kw)
            if base_name == "linear"
            else BASELINES[base_name](**kw)
        )
        if name != base_name:
            model = KnockdownPrior(model)
        out[name] = model.fit_profiles(prof)
    return out
