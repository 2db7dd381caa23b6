"""Noise ceiling: half of a perturbation's own cells predicts the other half.

Nothing here imports torch.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ._baselines import Baseline, TrainingProfiles
from ._metrics import _rng_for
from ._utils import canonical_labels, check_labels, control_tokens_for, group_stats, log_normalize

__all__ = ["SplitHalfCeiling"]


class SplitHalfCeiling(Baseline):
    """Noise ceiling: half of a perturbation's own cells predicts the other half.

    :meth:`fit` takes the *held-out* cells (with controls). For every perturbation the cells
    are split at random (seeded per label) into half A (``n // 2`` cells) and half B; the
    prediction is the mean profile of half A. ``eval_mask_`` (boolean over the fitted AnnData's
    cells) is True for half B and every other cell (controls included). Evaluate *all*
    methods on the same cells so the comparison is fair::

        ceiling = SplitHalfCeiling().fit(adata_heldout, "perturbation", "control")
        ev = adata_heldout[ceiling.eval_mask_]
        preds = {"ceiling": ceiling.predict(perts), "train_mean": tm.predict(perts)}
        compare(preds, ev, "perturbation", "control", control_mask=ctrl_mask[ceiling.eval_mask_])

    The ceiling is conservative: it predicts from ``n/2`` cells and is scored against ``n/2``
    cells. Perturbations with fewer than 2 cells cannot be split; predicting them raises.
    """

    name = "split_half"

    def __init__(self, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    def fit(
        self,
        adata_train: ad.AnnData,
        perturbation_key: str,
        control_group: str,
        layer: str | None = None,
    ) -> SplitHalfCeiling:
        """Split every held-out perturbation's cells; ``adata_train`` = the held-out cells."""
        labels = check_labels(adata_train, perturbation_key, control_group)
        tokens = control_tokens_for(control_group, self.control_tokens)
        canon = canonical_labels(labels, self.separator, tokens)
        keys = sorted({c for c in pd.unique(canon) if c})
        masks: dict[str, np.ndarray] = {}
        in_a = np.zeros(labels.size, dtype=bool)
        for key in keys:
            idx = np.flatnonzero(canon == key)
            if idx.size < 2:
                continue
            perm = _rng_for(self.seed, key).permutation(idx)
            m = np.zeros(labels.size, dtype=bool)
            m[perm[: idx.size // 2]] = True
            masks[key] = m
            in_a |= m
        split = list(masks)
        X = log_normalize(adata_train, layer)
        mean, _, _ = group_stats(X, canon, ["", *split], masks=masks)
        self.genes_ = pd.Index(adata_train.var_names.astype(str), name="gene")
        self._tokens = tokens
        self.control_mean_ = pd.Series(mean[0], index=self.genes_, name="control")
        self.half_means_ = pd.DataFrame(mean[1:], index=pd.Index(split), columns=self.genes_)
        self.eval_mask_ = ~in_a
        return self

    def fit_profiles(self, profiles: TrainingProfiles) -> Baseline:  # pragma: no cover
        raise ValueError("SplitHalfCeiling needs the held-out cells: use fit(adata_heldout, ...)")

    def _predict_delta(self, genes: tuple[str, ...], label: str) -> np.ndarray:
        key = self.separator.join(genes)
        if key not in self.half_means_.index:
            raise ValueError(
                f"SplitHalfCeiling has no cells (>= 2) for perturbation {label!r}; fit it on "
                "the held-out cells"
            )
        return self.half_means_.loc[key].to_numpy() - self.control_mean_.to_numpy()
