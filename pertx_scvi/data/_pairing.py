"""Control -> perturbed pairing: every target cell gets a control source of its own context."""

import numpy as np


class ControlSampler:
    """Draws, for many target cells at once, a control cell from the same context.

    Parameters
    ----------
    control_cells
        Row positions of the control cells that may serve as sources.
    context
        (n_cells,) integer context code of every cell (cell type x batch).
    context_names
        Names of the context codes, for error messages.
    """

    def __init__(self, control_cells: np.ndarray, context: np.ndarray, context_names=None):
        control_cells = np.asarray(control_cells, dtype=np.int64)
        self.context = np.asarray(context, dtype=np.int64)
        n_contexts = int(self.context.max()) + 1 if len(self.context) else 0
        order = np.argsort(self.context[control_cells], kind="stable")
        self.sorted_controls = control_cells[order]
        self.counts = np.bincount(self.context[control_cells], minlength=n_contexts)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.context_names = context_names

    @property
    def control_cells(self) -> np.ndarray:
        """Row positions of the control cells that may serve as sources, sorted."""
        return np.sort(self.sorted_controls)

    def capped(self, max_per_context: int, seed: int = 0) -> "ControlSampler":
        """A sampler over at most ``max_per_context`` control cells of each context, a random
        subset fixed by ``seed`` (all of a context's controls when it has fewer)."""
        if int(max_per_context) < 1:
            raise ValueError(f"max_cached_controls must be at least 1, got {max_per_context}")
        # Sorted by context, a random order within each context: the first ones are kept.
        rng = np.random.default_rng(seed)
        ctx = self.context[self.sorted_controls]
        order = np.lexsort((rng.random(len(ctx)), ctx))
        rank = np.arange(len(ctx)) - self.offsets[ctx[order]]
        kept = self.sorted_controls[order][rank < int(max_per_context)]
        # In position order, as the full sampler: the same draws when nothing is dropped.
        return ControlSampler(np.sort(kept), self.context, self.context_names)

    def check_targets(self, targets: np.ndarray) -> None:
        """Raise a ValueError naming every context of ``targets`` that has no control cell."""
        needed = np.unique(self.context[targets])
        empty = needed[self.counts[needed] == 0]
        if len(empty):
            names = [self.context_names[c] if self.context_names else int(c) for c in empty]
            raise ValueError(
                f"no control cells in context(s) {names}: every cell type / batch with perturbed "
                "cells needs control cells of its own to pair with"
            )

    def draw(self, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random control source per target (vectorised; with replacement)."""
        ctx = self.context[targets]
        picks = (rng.random(len(targets)) * self.counts[ctx]).astype(np.int64)
        return self.sorted_controls[self.offsets[ctx] + picks]
