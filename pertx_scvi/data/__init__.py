"""From registered AnnData arrays to paired mini-batches of tensors."""

from ._dataset import PairedBatchDataset, RegisteredCells, cell_loader, paired_loader
from ._pairing import ControlSampler
from ._splitter import PerturbationDataSplitter, split_cells

__all__ = [
    "RegisteredCells",
    "ControlSampler",
    "PairedBatchDataset",
    "PerturbationDataSplitter",
    "cell_loader",
    "paired_loader",
    "split_cells",
]
