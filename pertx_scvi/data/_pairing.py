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
