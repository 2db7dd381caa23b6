"""Perturbation-aware split: held-out labels never reach training; a random validation share."""

import numpy as np
from scvi.dataloaders import DataSplitter

from ._dataset import PairedBatchDataset, RegisteredCells, paired_loader
from ._pairing import ControlSampler
from ._sampler import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS

#: Control cells of each context kept in memory as pairing sources when the matrix is on disk.
DEFAULT_MAX_CACHED_CONTROLS = 4096


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
        Seed of the batch order and the pairing (validation pairs are fixed by ``seed + 1``).
    holdout_perturbations
        The labels held out (``test_idx``), kept for the model's bookkeeping.
    block_size
        Contiguous training cells per block of the batch order
        (:class:`~pertx_scvi.data.BlockBatchSampler`); ``"auto"``: blocks of
        :data:`~pertx_scvi.data.DEFAULT_BLOCK_SIZE` cells when the matrix is read from disk
        (backed AnnData), a full random order when it is in memory; None: a full random order.
        (In memory, blocks neither sped training up nor changed the validation loss of a
        label-sorted simulated screen beyond seed noise; the full random order is kept there.)
    window_blocks
        Blocks read together and shuffled among themselves.
    max_cached_controls
        When the matrix is read from disk: the control cells of each context that serve as
        sources, a random subset fixed by ``seed``, read once and kept in memory (sparse), so
        that pairing reads nothing from disk; in memory every control cell serves.

    Notes
    -----
    The training order of an epoch and the pairing of each batch are functions of ``seed``,
    the epoch and the batch number alone (see :class:`~pertx_scvi.data.BlockBatchSampler`):
    a resumed run sees the data an uninterrupted one sees, and every DDP rank generates the
    same order (each trains on its own share of the batches).
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
        block_size: int | str | None = "auto",
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
        max_cached_controls: int = DEFAULT_MAX_CACHED_CONTROLS,
    ):
        super().__init__(
            adata_manager,
            external_indexing=[train_idx, val_idx, test_idx],
            batch_size=batch_size,
        )
        if block_size == "auto":
            block_size = DEFAULT_BLOCK_SIZE if cells.is_backed else None
        elif isinstance(block_size, str) or (block_size is not None and int(block_size) < 1):
            raise ValueError(f"block_size must be at least 1, None or 'auto', got {block_size!r}")
        for name, value in (
            ("window_blocks", window_blocks),
            ("max_cached_controls", max_cached_controls),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.batch_size = batch_size
        self.seed = seed
        self.block_size, self.window_blocks = block_size, window_blocks
        self.holdout_perturbations = list(holdout_perturbations or [])
        sampler.check_targets(np.concatenate([train_idx, val_idx]))
        if cells.is_backed:
            # Sources are drawn at random over the whole file: keep a bounded set in memory.
            sampler = sampler.capped(max_cached_controls, seed)
            cells = cells.with_cached_rows(sampler.control_cells)
        self.cells, self.sampler = cells, sampler

    def trained_gene_positions(self) -> np.ndarray:
        """Vocabulary positions of the genes perturbed in the training cells."""
        codes = np.unique(self.cells.label_codes[self.train_idx])
        genes = np.unique(self.cells.label_gene_sets[codes])
        return genes[genes >= 0]

    def _loader(self, dataset: PairedBatchDataset, shuffle: bool):
        return paired_loader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            block_size=self.block_size,
            window_blocks=self.window_blocks,
            seed=self.seed,
        )

    def train_dataloader(self):
        dataset = PairedBatchDataset(self.cells, self.train_idx, self.sampler, seed=self.seed)
        return self._loader(dataset, shuffle=True)

    def val_dataloader(self):
        if self.n_val == 0:
            return []
        dataset = PairedBatchDataset(
            self.cells, self.val_idx, self.sampler, seed=self.seed + 1, fixed_sources=True
        )
        return self._loader(dataset, shuffle=False)
