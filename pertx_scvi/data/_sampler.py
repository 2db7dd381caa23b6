"""Batch order of an epoch as a pure function of (seed, epoch): shuffled blocks of contiguous
cells for data read from disk, rank shards under DDP."""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler

#: Contiguous training cells per block when the matrix is read from disk.
DEFAULT_BLOCK_SIZE = 1024
#: Blocks read together and shuffled among themselves.
DEFAULT_WINDOW_BLOCKS = 8

_ORDER_STREAM, _PAIRING_STREAM = 0x0B10C, 0x9A1E


def _entropy(*values: int) -> list[int]:
    # SeedSequence takes non-negative integers only.
    return [int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in values]


def order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of the batch order of ``epoch``."""
    return np.random.default_rng(_entropy(seed, epoch, _ORDER_STREAM))


def pairing_rng(seed: int, epoch: int, number: int) -> np.random.Generator:
    """The generator of the control pairing of batch ``number`` of ``epoch``: a function of
    (seed, epoch, batch number) alone, so that a resumed run, every DDP rank and every data
    loader worker pair a batch alike."""
    return np.random.default_rng(_entropy(seed, epoch, number, _PAIRING_STREAM))


@dataclass(frozen=True, eq=False)
class BatchKey:
    """One batch as yielded by :class:`BlockBatchSampler`.

    Attributes
    ----------
    epoch
        The epoch the batch belongs to.
    number
        Position of the batch in the epoch's full order (the same on every rank).
    positions
        Item positions of the batch (into the dataset's items, e.g. its target cells).
    windows
        The windows the batch's items are drawn from (one, or two where the batch straddles
        two windows; None when items are read one batch at a time): each a (k, 2) array of
        the item ranges ``[start, stop)`` of its blocks, sorted by start. A window is read
        once (each block with contiguous reads) and kept while batches draw from it.
    """

    epoch: int
    number: int
    positions: np.ndarray
    windows: tuple[np.ndarray, ...] | None = None


class BlockBatchSampler(DistributedSampler):
    """Batches of item positions, generated per epoch from ``(seed, epoch)`` alone.

    With ``block_size``, the items (sorted cell positions, so contiguous items are nearby
    rows of the file) are cut into blocks of ``block_size`` contiguous items; an epoch shuffles
    the blocks, groups ``window_blocks`` consecutive blocks of that order into a window and
    shuffles the items of each window; batches are consecutive ``batch_size`` items of the
    result. A file is so read by windows of contiguous blocks instead of single rows, and a
    window is read once. Without ``block_size`` the epoch is a full random permutation (every
    item anywhere); without ``shuffle`` the order is the items' own.

    Lightning calls :meth:`set_epoch` at every epoch. Under ``torch.distributed`` (or with
    explicit ``num_replicas`` and ``rank``), each rank yields ``batches[rank::num_replicas]``,
    truncated so that every rank has the same number of batches; every rank generates the same
    full order.

    Parameters
    ----------
    n_items
        Items to order (positions ``0 .. n_items - 1``).
    batch_size
        Items per batch.
    block_size
        Contiguous items per block; None for a full permutation.
    window_blocks
        Blocks per window.
    shuffle
        Shuffle the order every epoch (training); else the items' order (validation).
    seed
        Seed of the order.
    drop_last
        Drop the last, smaller batch.
    num_replicas, rank
        Rank sharding; None reads them from ``torch.distributed`` when it is initialised.

    Notes
    -----
    A :class:`~torch.utils.data.DistributedSampler` subclass only so that Lightning, under DDP,
    leaves it in place (it shards by itself) even where its ``use_distributed_sampler`` is on,
    instead of wrapping it in a second, shuffling sampler; ``DistributedSampler.__init__`` is
    not called (it needs an initialised process group).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        block_size: int | None = None,
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if block_size is not None and int(block_size) < 1:
            raise ValueError(f"block_size must be at least 1 (or None), got {block_size}")
        if int(window_blocks) < 1:
            raise ValueError(f"window_blocks must be at least 1, got {window_blocks}")
        if (num_replicas is None) != (rank is None):
            raise ValueError("pass both num_replicas and rank, or neither")
        if num_replicas is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.block_size = None if block_size is None else int(block_size)
        self.window_blocks = int(window_blocks)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self._replicas = num_replicas, rank
        self.epoch = 0

    @property
    def num_replicas(self) -> int:
        """Ranks the batches are shared among (1 outside distributed training)."""
        return self._rank_and_replicas()[1]

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self._rank_and_replicas()[0]

    def _rank_and_replicas(self) -> tuple[int, int]:
        replicas, rank = self._replicas
        if replicas is not None:
            return int(rank), int(replicas)
        # Read at iteration, not construction: Lightning builds loaders before or after it
        # initialises the process group depending on the strategy.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    @property
    def n_batches(self) -> int:
        """Batches of the full order (all ranks together)."""
        if self.drop_last:
            return self.n_items // self.batch_size
        return -(-self.n_items // self.batch_size)

    def _blocks(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.arange(0, self.n_items, self.block_size, dtype=np.int64)
        return starts, np.minimum(starts + self.block_size, self.n_items)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """The full item order of ``epoch``, the window of each place in it and each window's
        item ranges (``(order, None, [])`` without blocks)."""
        n = self.n_items
        if self.block_size is None:
            order = order_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
            return order.astype(np.int64), None, []
        starts, stops = self._blocks()
        n_blocks = len(starts)
        rng = order_rng(self.seed, epoch)
        blocks = rng.permutation(n_blocks) if self.shuffle else np.arange(n_blocks)
        sizes = stops[blocks] - starts[blocks]
        # Items of the blocks in block order: each block's start repeated, plus 0, 1, ... within.
        offsets = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        order = np.repeat(starts[blocks], sizes) + offsets
        window_of_block = np.arange(n_blocks) // self.window_blocks
        window = np.repeat(window_of_block, sizes)
        if self.shuffle:
            order = order[np.lexsort((rng.random(n), window))]
        cuts = np.arange(self.window_blocks, n_blocks, self.window_blocks)
        ranges = [
            np.stack([starts[chosen], stops[chosen]], axis=1)
            for chosen in map(np.sort, np.split(blocks, cuts))
        ]
        return order, window, ranges

    def batches(self, epoch: int | None = None) -> list[BatchKey]:
        """Every batch of ``epoch`` (default: the current one), for all ranks."""
        epoch = self.epoch if epoch is None else int(epoch)
        order, window, ranges = self.order(epoch)
        keys = []
        for number in range(self.n_batches):
            positions = order[number * self.batch_size : (number + 1) * self.batch_size]
            windows = None
            if window is not None:
                first = window[number * self.batch_size]
                last = window[number * self.batch_size + len(positions) - 1]
                windows = tuple(ranges[first : last + 1])
            keys.append(BatchKey(epoch, number, positions, windows))
        return keys

    def __iter__(self):
        rank, replicas = self._rank_and_replicas()
        keys = self.batches()
        if replicas > 1:
            keys = keys[rank::replicas][: len(keys) // replicas]
        return iter(keys)

    def __len__(self) -> int:
        rank, replicas = self._rank_and_replicas()
        return self.n_batches // replicas if replicas > 1 else self.n_batches
