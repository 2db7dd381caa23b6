"""From registered AnnData arrays to paired mini-batches of tensors."""

from ._dataset import CellArrays, PairedBatchDataset, cell_loader, paired_loader
from ._pairing import ControlSampler
from ._splitter import PerturbationDataModule, split_cells

__all__ = [
    "CellArrays",
    "ControlSampler",
    "PairedBatchDataset",
    "PerturbationDataModule",
    "cell_loader",
    "paired_loader",
    "split_cells",
]
