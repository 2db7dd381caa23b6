"""Mini-batches of (source, target) pairs, collated as whole-batch tensor operations."""

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from pertx_scvi._constants import BATCH_KEYS

from ._pairing import ControlSampler
from ._rows import is_in_memory, read_rows
from ._sampler import BatchKey, BlockBatchSampler, pairing_rng


@dataclass(frozen=True)
class RowCache:
    """Rows kept in memory (e.g. the control sources of a backed matrix).

    Attributes
    ----------
    positions
        (n,) sorted cell positions of the cached rows.
    rows
        (n, n_genes) their expression, CSR float32, in registered gene order.
    """

    positions: np.ndarray
    rows: sp.csr_matrix

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``positions``: whether it is cached, and its row in :attr:`rows`."""
        slot = np.searchsorted(self.positions, positions)
        slot = np.minimum(slot, max(len(self.positions) - 1, 0))
        hit = (self.positions[slot] == positions) if len(self.positions) else slot < 0
        return hit, slot


@dataclass
class RegisteredCells:
    """The registered data of one AnnData: expression rows read per batch, codes read once.

    Attributes
    ----------
    matrix
        The registered expression matrix as the AnnData holds it: in memory (numpy, scipy
        sparse) or read lazily (backed h5py dataset or sparse dataset, dask array). Only the
        rows of a batch are read (:meth:`dense`), never the whole matrix.
    label_codes
        (n_cells,) perturbation label code of each cell: every spelling of a gene set has the
        code of its first label; -1 for empty labels.
    label_gene_sets
        (n_labels, max_set_size) vocabulary positions of each label's genes, -1 padded.
    context
        (n_cells,) pairing context code (cell type x batch).
    cell_type
        (n_cells,) cell-type code.
    phenotype
        (n_cells, n_phenotypes) continuous scores, or None.
    columns
        Column of ``matrix`` holding each registered gene (in registered order), or None when
        the matrix's columns are the registered genes: applied to the rows of each batch, so a
        matrix with other genes or another gene order is never copied whole.
    cache
        Rows served from memory instead of ``matrix`` (:meth:`with_cached_rows`), or None.
    """

    matrix: object
    label_codes: np.ndarray
    label_gene_sets: np.ndarray
    context: np.ndarray
    cell_type: np.ndarray
    phenotype: np.ndarray | None = None
    columns: np.ndarray | None = None
    cache: RowCache | None = None

    @property
    def n_cells(self) -> int:
        return len(self.label_codes)

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1]) if self.columns is None else len(self.columns)

    @property
    def is_backed(self) -> bool:
        """Whether the matrix is read from disk (or lazily), not held in memory."""
        return not is_in_memory(self.matrix)

    def read(self, positions: np.ndarray) -> np.ndarray | sp.csr_matrix:
        """Rows at sorted, unique ``positions`` read from the matrix (not the cache), float32
        in registered gene order: dense numpy or CSR, as the matrix is stored."""
        return read_rows(self.matrix, positions, self.columns)

    def dense(self, positions: np.ndarray) -> torch.Tensor:
        """Expression of the cells at ``positions`` (any order, repeats allowed) as a dense
        float32 tensor; cached rows come from memory."""
        # Each row is read once, in sorted order (contiguous reads on disk), then reordered.
        unique, inverse = np.unique(np.asarray(positions, dtype=np.int64), return_inverse=True)
        hit = np.zeros(len(unique), dtype=bool)
        if self.cache is not None:
            hit, slot = self.cache.lookup(unique)
        if hit.all() and len(unique):
            values = self.cache.rows[slot].toarray()
        elif not hit.any():
            values = _as_dense(self.read(unique))
        else:
            values = np.empty((len(unique), self.n_genes), dtype=np.float32)
            values[hit] = self.cache.rows[slot[hit]].toarray()
            values[~hit] = _as_dense(self.read(unique[~hit]))
        return torch.from_numpy(np.ascontiguousarray(values[inverse], dtype=np.float32))

    def with_cached_rows(self, positions: np.ndarray) -> "RegisteredCells":
        """A copy whose rows at ``positions`` are read once now (in contiguous pieces) and kept
        in memory as CSR; other rows are read from the matrix as before."""
        positions = np.unique(np.asarray(positions, dtype=np.int64))
        rows = sp.csr_matrix(self.read(positions), dtype=np.float32)
        return replace(self, cache=RowCache(positions, rows))


def _as_dense(rows) -> np.ndarray:
    return rows.toarray() if sp.issparse(rows) else np.asarray(rows, dtype=np.float32)


class PairedBatchDataset(Dataset):
    """Indexed by a batch (:class:`~pertx_scvi.data.BatchKey`, or positions into
    ``targets``); returns the collated batch of (control source, target) pairs.

    A :class:`~pertx_scvi.data.BatchKey` from :class:`~pertx_scvi.data.BlockBatchSampler`
    draws its sources from a generator seeded by (seed, epoch, batch number): a batch pairs
    alike in a resumed run, on every rank and in every worker. Plain positions (direct use,
    outside a loader) draw from a generator of the dataset, redrawn at every access. With
    ``fixed_sources`` (validation) the pairs are drawn once, from ``seed``.

    On a matrix read from disk, the targets of a key's window (its blocks) are read once and
    kept while the following batches draw from them; at most two windows are kept.
    """

    def __init__(
        self,
        cells: RegisteredCells,
        targets: np.ndarray,
        sampler: ControlSampler,
        seed: int = 0,
        fixed_sources: bool = False,
    ):
        self.cells = cells
        self.targets = np.asarray(targets, dtype=np.int64)
        self.sampler = sampler
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.sources = sampler.draw(self.targets, self.rng) if fixed_sources else None
        self._windows: dict[bytes, tuple | None] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def _read_window(self, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
        """(ranges, offsets, rows): the window's target rows, its blocks one after the other
        (block ``i`` from row ``offsets[i]`` of ``rows``)."""
        sizes = ranges[:, 1] - ranges[:, 0]
        items = np.repeat(ranges[:, 0] - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
        rows = sp.csr_matrix(self.cells.read(self.targets[items]), dtype=np.float32)
        return ranges, np.cumsum(sizes) - sizes, rows

    def _window_rows(self, positions: np.ndarray, windows) -> torch.Tensor:
        """Target rows of ``positions`` from their windows, each read once and kept while
        batches draw from it (at most two windows: the last batch of a window may straddle
        into the next)."""
        keys = [ranges.tobytes() for ranges in windows]
        self._windows = {key: self._windows.get(key) for key in keys}
        for key, ranges in zip(keys, windows, strict=True):
            if self._windows[key] is None:
                self._windows[key] = self._read_window(ranges)
        out = np.empty((len(positions), self.cells.n_genes), dtype=np.float32)
        done = np.zeros(len(positions), dtype=bool)
        for ranges, offsets, rows in self._windows.values():
            block = np.searchsorted(ranges[:, 0], positions, side="right") - 1
            inside = (block >= 0) & (positions < ranges[np.maximum(block, 0), 1]) & ~done
            if inside.all():
                return torch.from_numpy(
                    rows[offsets[block] + positions - ranges[block, 0]].toarray()
                )
            mine = positions[inside] - ranges[block[inside], 0] + offsets[block[inside]]
            out[inside] = rows[mine].toarray()
            done |= inside
        return torch.from_numpy(out)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        windows = None
        if isinstance(key, BatchKey):
            positions, windows = np.asarray(key.positions, dtype=np.int64), key.windows
            rng = pairing_rng(self.seed, key.epoch, key.number)
        else:
            positions, rng = np.asarray(key, dtype=np.int64), self.rng
        targets = self.targets[positions]
        if self.sources is None:
            sources = self.sampler.draw(targets, rng)
        else:
            sources = self.sources[positions]
        cells = self.cells
        if windows is not None and cells.is_backed:
            target_x = self._window_rows(positions, windows)
        else:
            target_x = cells.dense(targets)
        batch = {
            BATCH_KEYS.SOURCE_X: cells.dense(sources),
            BATCH_KEYS.TARGET_X: target_x,
            BATCH_KEYS.PERTURBATION_GENES: torch.from_numpy(
                cells.label_gene_sets[cells.label_codes[targets]]
            ),
            BATCH_KEYS.TARGET_LABEL: torch.from_numpy(cells.label_codes[targets]),
            BATCH_KEYS.CELL_TYPE: torch.from_numpy(cells.cell_type[targets]),
            BATCH_KEYS.CONTEXT: torch.from_numpy(cells.context[targets]),
        }
        if cells.phenotype is not None:
            batch[BATCH_KEYS.PHENOTYPE] = torch.from_numpy(cells.phenotype[targets])
            batch[BATCH_KEYS.SOURCE_PHENOTYPE] = torch.from_numpy(cells.phenotype[sources])
        return batch


def paired_loader(
    dataset: PairedBatchDataset,
    batch_size: int,
    shuffle: bool,
    block_size: int | None = None,
    window_blocks: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """DataLoader of whole batches (one fetch per batch) in the order of a
    :class:`~pertx_scvi.data.BlockBatchSampler` (see there for ``block_size``,
    ``window_blocks``, ``shuffle`` and ``seed``)."""
    options = {} if window_blocks is None else {"window_blocks": window_blocks}
    sampler = BlockBatchSampler(
        len(dataset), batch_size, block_size=block_size, shuffle=shuffle, seed=seed, **options
    )
    return DataLoader(dataset, sampler=sampler, batch_size=None)


class CellBatchDataset(Dataset):
    """Expression of single cells in batches (embedding and prediction inputs)."""

    def __init__(self, cells: RegisteredCells):
        self.cells = cells

    def __len__(self) -> int:
        return self.cells.n_cells

    def __getitem__(self, positions) -> torch.Tensor:
        return self.cells.dense(positions)


def cell_loader(cells: RegisteredCells, batch_size: int) -> DataLoader:
    """Sequential batches of dense expression rows."""
    dataset = CellBatchDataset(cells)
    return DataLoader(
        dataset,
        sampler=BatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=False),
        batch_size=None,
    )
