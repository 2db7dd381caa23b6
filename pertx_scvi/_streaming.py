"""Streaming prediction: one pass over the source cells, all perturbations per batch.

:func:`iter_predictions` is the core every prediction output is built on: it walks the source
cells in batches, encodes each batch once, and yields the prediction of that batch under each
perturbation in turn (a :class:`PredictionBlock`). Memory is that of one block; what is kept of
the blocks is the consumer's choice: every predicted cell in memory (:func:`collect_anndata`),
per-perturbation means (:func:`collect_means`), or rows written to disk as they come
(:func:`pertx_scvi._streaming_io.write_predictions`). :class:`PredictionLayout` says where
each block's rows go and builds their annotations, the same for every output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from ._constants import TARGET_SUM
from .data import RegisteredCells, cell_loader

OUTPUTS = ("anndata", "means", "h5ad", "zarr")
X_ESTIMATORS = ("monte_carlo", "exact")


@dataclass
class PredictionBlock:
    """Prediction of source cells ``start:stop`` under perturbation number ``perturbation``.

    ``expected`` (None when not asked for), ``mean`` and every tensor of ``samples`` and
    ``heads`` have one row per source cell; see :meth:`PertTXModule.predict
    <pertx_scvi.module.PertTXModule.predict>`.
    """

    perturbation: int
    start: int
    stop: int
    expected: torch.Tensor | None
    mean: torch.Tensor
    samples: list[torch.Tensor]
    heads: dict[str, torch.Tensor]


def iter_predictions(
    module,
    cells: RegisteredCells,
    gene_sets: torch.Tensor,
    *,
    batch_size: int,
    n_samples: int,
    n_draws: int,
    estimator: str | None,
    seed: int,
    device,
) -> Iterator[PredictionBlock]:
    """Predict every perturbation (rows of ``gene_sets``) from every source cell of ``cells``.

    Blocks come batch by batch, perturbations in order within a batch; each batch of source
    cells goes through the encoder once. Count samples draw from one generator seeded with
    ``seed`` and the Monte Carlo draws behind ``expected`` from another (``seed + 1``), so the
    samples do not depend on ``n_draws`` and the expected values do not depend on
    ``n_samples``; both depend on the batch size and on the perturbations asked for before.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    draw_generator = torch.Generator(device=device).manual_seed(seed + 1)
    start = 0
    for batch in cell_loader(cells, batch_size):
        with torch.inference_mode():
            x = batch.to(device)
            z = module.embed_cells(x)
            library = module.library(x)
        stop = start + len(z)
        for p in range(len(gene_sets)):
            with torch.inference_mode():
                predicted = module.predict(
                    z,
                    gene_sets[p].expand(len(z), -1),
                    library,
                    n_samples=n_samples,
                    n_draws=n_draws,
                    generator=generator,
                    draw_generator=draw_generator,
                    estimator=estimator,
                )
            yield PredictionBlock(
                p,
                start,
                stop,
                predicted["expected"],
                predicted["mean"],
                predicted["samples"],
                predicted["heads"],
            )
        start = stop


def _per_source(column: pd.Series) -> pd.Categorical | np.ndarray:
    """An obs column copied to predicted cells: strings as categoricals (what ``write_h5ad``
    would make of them, so files and memory agree), other values as they are."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.array
    if pd.api.types.is_string_dtype(column):
        return pd.Categorical(column.to_numpy())
    return column.to_numpy()


@dataclass
class PredictionLayout:
    """Rows and annotations of predicted cells: one row per perturbation, sample and source
    cell, perturbation-major (row ``(p * n_sample_rows + s) * n_sources + cell``).

    Attributes
    ----------
    perturbations
        Labels, in order.
    source_names
        ``obs_names`` of the source cells.
    var_names
        Genes (columns).
    n_samples
        Count samples per source cell and perturbation (0: none drawn).
    counts
        Whether the model predicts counts (then there are ``mean`` and ``counts`` layers).
    source_columns
        obs columns copied from each source cell (cell type, batch).
    cell_type_key, classes, phenotype_keys
        Names of the next-cell head outputs (obs / obsm columns).
    uns
        ``uns`` of the result.
    """

    perturbations: list[str]
    source_names: pd.Index
    var_names: pd.Index
    n_samples: int
    counts: bool
    source_columns: dict[str, pd.Categorical | np.ndarray] = field(default_factory=dict)
    cell_type_key: str | None = None
    classes: np.ndarray | None = None
    phenotype_keys: list[str] = field(default_factory=list)
    uns: dict = field(default_factory=dict)

    @classmethod
    def from_source(cls, adata: AnnData, copied_keys: Iterable[str | None], **kwargs):
        """Layout of predictions from the cells of ``adata``, copying ``copied_keys``."""
        columns = {
            key: _per_source(adata.obs[key])
            for key in copied_keys
            if key is not None and key in adata.obs
        }
        return cls(source_names=adata.obs_names.copy(), source_columns=columns, **kwargs)

    def __post_init__(self):
        names = self.source_names.to_numpy()
        self._sources = pd.Categorical(names, categories=pd.unique(names))

    @property
    def n_sources(self) -> int:
        return len(self.source_names)

    @property
    def n_sample_rows(self) -> int:
        """Rows per source cell and perturbation: one per sample, at least one."""
        return max(self.n_samples, 1)

    @property
    def n_rows(self) -> int:
        return len(self.perturbations) * self.n_sample_rows * self.n_sources

    def offset(self, perturbation: int, sample: int) -> int:
        """Row of the first source cell's prediction under ``perturbation``, ``sample``."""
        return (perturbation * self.n_sample_rows + sample) * self.n_sources

    def var(self) -> pd.DataFrame:
        return pd.DataFrame(index=self.var_names.copy())

    def obs(self, rows: np.ndarray) -> pd.DataFrame:
        """obs of the predicted cells at ``rows`` (without the head columns)."""
        rows = np.asarray(rows, dtype=np.int64)
        per_perturbation = self.n_sample_rows * self.n_sources
        cell = rows % self.n_sources
        sources = self._sources
        obs = pd.DataFrame(
            {
                "perturbation": pd.Categorical.from_codes(
                    rows // per_perturbation, categories=self.perturbations
                ),
                "source_cell": pd.Categorical.from_codes(
                    sources.codes[cell], categories=sources.categories
                ),
                "sample": (rows // self.n_sources) % self.n_sample_rows,
            },
            index=pd.Index(np.char.add("pred_", rows.astype(str)).astype(object)),
        )
        for key, values in self.source_columns.items():
            if isinstance(values, pd.Categorical):
                obs[key] = pd.Categorical.from_codes(
                    values.codes[cell], categories=values.categories, ordered=values.ordered
                )
            else:
                obs[key] = values[cell]
        return obs

    def head_columns(
        self, index: pd.Index, heads: dict[str, np.ndarray]
    ) -> tuple[dict[str, object], dict[str, pd.DataFrame]]:
        """obs columns and obsm tables of head outputs (rows ``index``)."""
        columns, tables = {}, {}
        for name, values in heads.items():
            if name == "cell_type_probabilities":
                key = self.cell_type_key
                tables[f"{key}_probabilities"] = pd.DataFrame(
                    values, index=index, columns=self.classes
                )
                columns[f"predicted_{key}"] = pd.Categorical.from_codes(
                    values.argmax(1), categories=self.classes
                )
            elif name == "phenotype":
                for j, key in enumerate(self.phenotype_keys):
                    columns[f"predicted_{key}"] = values[:, j]
        return columns, tables

    def block_rows(self, block: PredictionBlock, sample: int) -> slice:
        start = self.offset(block.perturbation, sample) + block.start
        return slice(start, start + block.stop - block.start)


def block_arrays(block: PredictionBlock) -> dict[str, np.ndarray]:
    """The block's per-cell values as numpy arrays: ``X``, ``mean`` and ``heads/<name>``."""
    arrays = {"mean": block.mean.cpu().numpy()}
    if block.expected is not None:
        arrays["X"] = block.expected.cpu().numpy()
    for name, value in block.heads.items():
        arrays[f"heads/{name}"] = value.cpu().numpy()
    return arrays


def collect_anndata(blocks: Iterable[PredictionBlock], layout: PredictionLayout) -> AnnData:
    """Every predicted cell in one AnnData (see ``PertTX.predict_perturbation``)."""
    n_rows, n_genes = layout.n_rows, len(layout.var_names)
    X = np.empty((n_rows, n_genes), dtype=np.float32)
    mean = np.empty((n_rows, n_genes), dtype=np.float32) if layout.counts else None
    heads: dict[str, np.ndarray] = {}
    pieces = [[[] for _ in range(layout.n_samples)] for _ in layout.perturbations]
    for block in blocks:
        arrays = block_arrays(block)
        for s in range(layout.n_sample_rows):
            rows = layout.block_rows(block, s)
            X[rows] = arrays["X"]
            if mean is not None:
                mean[rows] = arrays["mean"]
            for name, value in block.heads.items():
                if name not in heads:
                    heads[name] = np.empty((n_rows, value.shape[1]), dtype=np.float32)
                heads[name][rows] = arrays[f"heads/{name}"]
        for s, draw in enumerate(block.samples):
            pieces[block.perturbation][s].append(sp.csr_matrix(draw.cpu().numpy()))
    layers = {}
    if layout.counts:
        layers["mean"] = mean
        if layout.n_samples > 0:
            stacked = sp.vstack([piece for per_p in pieces for per_s in per_p for piece in per_s])
            layers["counts"] = sp.csr_matrix(stacked, dtype=np.float32)
    result = AnnData(
        X=X,
        obs=layout.obs(np.arange(n_rows)),
        var=layout.var(),
        layers=layers,
        uns=dict(layout.uns),
    )
    columns, tables = layout.head_columns(result.obs_names, heads)
    for name, values in columns.items():
        result.obs[name] = values
    for name, table in tables.items():
        result.obsm[name] = table
    return result


def collect_means(
    blocks: Iterable[PredictionBlock], n_perturbations: int, sampled: bool = False
) -> dict[str, np.ndarray]:
    """Per-perturbation means (float64, perturbations x columns) over the source cells.

    Keys: ``X`` (when the blocks have it), ``mean``, ``heads/<name>``; with ``sampled``,
    ``sampled``: the mean over cells and samples of log1p(normalize_total(counts)) of the
    sampled counts. Memory: the sums, whatever the number of cells.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, p: int, values: torch.Tensor) -> None:
        if name not in sums:
            shape = (n_perturbations, values.shape[1])
            sums[name] = torch.zeros(shape, dtype=torch.float64, device=values.device)
            counts[name] = 0
        sums[name][p] += values.sum(0, dtype=torch.float64)
        if p == 0:
            counts[name] += len(values)

    for block in blocks:
        p = block.perturbation
        if block.expected is not None:
            add("X", p, block.expected)
        add("mean", p, block.mean)
        for name, value in block.heads.items():
            add(f"heads/{name}", p, value)
        if sampled:
            for draw in block.samples:
                total = draw.sum(-1, keepdim=True).clamp(min=1.0)
                add("sampled", p, torch.log1p(draw / total * TARGET_SUM))
    return {name: (total / max(counts[name], 1)).cpu().numpy() for name, total in sums.items()}
