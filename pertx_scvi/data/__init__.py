"""From registered AnnData arrays to paired mini-batches of tensors."""

from ._dataset import CellArrays, PairedBatchDataset, cell_loader, paired_loader
from ._pairing import ControlSampler
from ._splitter import PerturbationDataSplitter, split_cells

__all__ = [
    "CellArrays",
    "ControlSampler",
    "PairedBatchDataset",
    "PerturbationDataSplitter",
    "cell_loader",
    "paired_loader",
    "split_cells",
]
