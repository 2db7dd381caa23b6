"""From registered AnnData arrays to paired mini-batches of tensors."""

from ._dataset import PairedBatchDataset, RegisteredCells, RowCache, cell_loader, paired_loader
from ._pairing import ControlSampler
from ._rows import read_rows
from ._sampler import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_WINDOW_BLOCKS,
    BatchKey,
    BlockBatchSampler,
    pairing_rng,
)
from ._splitter import DEFAULT_MAX_CACHED_CONTROLS, PerturbationDataSplitter, split_cells

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_CACHED_CONTROLS",
    "DEFAULT_WINDOW_BLOCKS",
    "BatchKey",
    "BlockBatchSampler",
    "RegisteredCells",
    "RowCache",
    "ControlSampler",
    "PairedBatchDataset",
    "PerturbationDataSplitter",
    "cell_loader",
    "paired_loader",
    "pairing_rng",
    "read_rows",
    "split_cells",
]
