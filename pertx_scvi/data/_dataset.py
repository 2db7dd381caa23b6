"""Mini-batches of (source, target) pairs, collated as whole-batch tensor operations."""

from dataclasses import dataclass

import numpy as np
import torch
from scvi.data import AnnTorchDataset
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from pertx_scvi._constants import BATCH_KEYS, REGISTRY_KEYS

from ._pairing import ControlSampler


@dataclass
class RegisteredCells:
    """The registered data of one AnnData: expression rows read per batch, codes read once.

    Attributes
    ----------
    rows
        scvi-tools' ``AnnTorchDataset`` over the registered expression matrix (in memory or
        backed, dense or sparse); indexed by cell positions, it returns a dense batch.
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
    """

    rows: AnnTorchDataset
    label_codes: np.ndarray
    label_gene_sets: np.ndarray
    context: np.ndarray
    cell_type: np.ndarray
    phenotype: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return len(self.label_codes)

    def dense(self, positions: np.ndarray) -> torch.Tensor:
        """Expression of the cells at ``positions`` (any order, repeats allowed) as a dense
        float32 tensor."""
        # Backed matrices are read in sorted order: read each row once, then reorder.
        unique, inverse = np.unique(np.asarray(positions, dtype=np.int64), return_inverse=True)
        values = self.rows[unique][REGISTRY_KEYS.X_KEY]
        return torch.from_numpy(np.ascontiguousarray(values[inverse], dtype=np.float32))


class PairedBatchDataset(Dataset):
    """Indexed by a list of positions into ``targets``; returns one collated batch.

    Sources are redrawn at every access (a new pairing each epoch) unless ``fixed_sources`` is
    given (validation: pairs fixed by seed).
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
        self.rng = np.random.default_rng(seed)
        self.sources = sampler.draw(self.targets, self.rng) if fixed_sources else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64)
        targets = self.targets[positions]
        if self.sources is None:
            sources = self.sampler.draw(targets, self.rng)
        else:
            sources = self.sources[positions]
        cells = self.cells
        batch = {
            BATCH_KEYS.SOURCE_X: cells.dense(sources),
            BATCH_KEYS.TARGET_X: cells.dense(targets),
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


def paired_loader(dataset: PairedBatchDataset, batch_size: int, shuffle: bool) -> DataLoader:
    """DataLoader whose sampler yields whole batches of positions (one fetch per batch)."""
    order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(order, batch_size=batch_size, drop_last=False),
        batch_size=None,
    )


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
