"""Perturbation-aware split: held-out labels never reach training; a random validation share."""

import lightning.pytorch as pl
import numpy as np

from ._dataset import CellArrays, PairedBatchDataset, paired_loader
from ._pairing import ControlSampler


def split_cells(
    label_codes: np.ndarray,
    holdout_codes: np.ndarray,
    validation_size: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split cell positions into (train, validation, held out).

    Cells whose label is in ``holdout_codes`` are held out entirely; of the rest a random
    ``validation_size`` share (at least one cell when positive) goes to validation.
    """
    if not 0.0 <= validation_size < 1.0:
        raise ValueError(f"validation_size must be in [0, 1), got {validation_size}")
    held_out = np.isin(label_codes, holdout_codes)
    candidates = np.flatnonzero(~held_out)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(candidates)
    n_val = int(round(validation_size * len(candidates)))
    if validation_size > 0:
        n_val = max(n_val, 1)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val]), np.flatnonzero(held_out)


class PerturbationDataModule(pl.LightningDataModule):
    """Lightning data module of paired batches for training and validation.

    Exposes ``train_idx``, ``val_idx``, ``test_idx`` (held-out cells), ``n_train`` and ``n_val``
    as scvi-tools' data splitters do, so the train runner records them on the model.
    """

    def __init__(
        self,
        cells: CellArrays,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        test_idx: np.ndarray,
        sampler: ControlSampler,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.cells = cells
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        sampler.check_targets(np.concatenate([train_idx, val_idx]))

    def train_dataloader(self):
        dataset = PairedBatchDataset(self.cells, self.train_idx, self.sampler, seed=self.seed)
        return paired_loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self):
        if self.n_val == 0:
            return []
        dataset = PairedBatchDataset(
            self.cells, self.val_idx, self.sampler, seed=self.seed + 1, fixed_sources=True
        )
        return paired_loader(dataset, self.batch_size, shuffle=False)
