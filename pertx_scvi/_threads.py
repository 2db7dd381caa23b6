"""Keep torch's CPU thread count across code that resets it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's CPU thread count on exit (usable as a decorator).

    scanpy's numba kernels (used by the metrics and baselines) reset the OpenMP thread count
    to the number of cores; torch shares that pool, so training after an evaluation would
    otherwise run with more threads than asked for (many times slower on a busy machine).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
