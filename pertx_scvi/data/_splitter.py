"""Perturbation-aware split: held-out labels never reach training; a random validation share."""

import numpy as np
from scvi.dataloaders import DataSplitter

from ._dataset import PairedBatchDataset, RegisteredCells, paired_loader
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


class PerturbationDataSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` with a perturbation-aware split and
    paired batches.

    The split is given (``external_indexing``, from :func:`split_cells`: held-out labels never
    reach training or validation); the loaders serve whole batches of (control source,
    perturbed target) pairs from :class:`PairedBatchDataset` instead of scvi-tools'
    per-cell ``AnnDataLoader``. ``train_idx``, ``val_idx``, ``test_idx`` (held-out cells),
    ``n_train`` and ``n_val`` are the splitter's, so the train runner records them on the model.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    cells
        The registered arrays of every cell (:meth:`PertTX._registered_cells`).
    train_idx, val_idx, test_idx
        Cell positions of training, validation and held-out cells (every cell in one).
    sampler
        Control sources of each target cell's context.
    batch_size
        Pairs per batch.
    seed
        Seed of the pairing (validation pairs are fixed by ``seed + 1``).
    holdout_perturbations
        The labels held out (``test_idx``), kept for the model's bookkeeping.
    """

    def __init__(
        self,
        adata_manager,
        cells: RegisteredCells,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        test_idx: np.ndarray,
        sampler: ControlSampler,
        batch_size: int = 64,
        seed: int = 0,
        holdout_perturbations: list[str] | None = None,
    ):
        super().__init__(
            adata_manager,
            external_indexing=[train_idx, val_idx, test_idx],
            batch_size=batch_size,
        )
        self.cells = cells
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.holdout_perturbations = list(holdout_perturbations or [])
        sampler.check_targets(np.concatenate([train_idx, val_idx]))

    def trained_gene_positions(self) -> np.ndarray:
        """Vocabulary positions of the genes perturbed in the training cells."""
        codes = np.unique(self.cells.label_codes[self.train_idx])
        genes = np.unique(self.cells.label_gene_sets[codes])
        return genes[genes >= 0]

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
