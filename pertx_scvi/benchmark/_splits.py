"""Folds over perturbation labels: k-fold, GEARS-style splits and GEARS subgroups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .._labels import DEFAULT_CONTROL_TOKENS, DEFAULT_SEPARATOR, parse_perturbation

__all__ = ["SPLITS", "SUBGROUPS", "assign_subgroups", "gears_splits", "kfold_perturbations"]

SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
SPLITS = ("auto", "kfold", "gears")


def _groups(items: Iterable[str], n_folds: int, seed: int, what: str) -> list[list[str]]:
    """Sort ``items``, permute them with ``default_rng(seed)``, cut into consecutive groups."""
    ordered = np.array(sorted({str(i) for i in items}), dtype=object)
    n_folds = int(n_folds)
    if n_folds < 2:
        raise ValueError(f"folds must be >= 2, got {n_folds}")
    if len(ordered) < n_folds:
        raise ValueError(f"cannot cut {len(ordered)} {what} into {n_folds} folds")
    permuted = np.random.default_rng(seed).permutation(ordered)
    return [list(map(str, group)) for group in np.array_split(permuted, n_folds)]


def _perturbation_labels(labels: Iterable[str], control_tokens: Sequence[str], separator: str):
    """Distinct non-control labels (``str``) of ``labels``."""
    return sorted(
        {
            str(label)
            for label in labels
            if parse_perturbation(str(label), separator, control_tokens)
        }
    )


def kfold_perturbations(
    labels: Iterable[str],
    n_folds: int = 5,
    seed: int = 0,
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> list[list[str]]:
    """K-fold split over perturbation labels: every label is held out in exactly one fold.

    The distinct non-control labels are sorted, permuted with
    ``numpy.random.default_rng(seed).permutation`` and cut into ``n_folds`` consecutive groups
    (:func:`numpy.array_split`: sizes differ by at most one).

    Parameters
    ----------
    labels
        Perturbation labels (per cell or distinct); control labels are dropped.
    n_folds
        Number of folds (>= 2, at most the number of labels).
    seed
        Seed of the permutation.
    control_group
        The control label (``"ctrl"`` is also read as control).
    separator
        Separator of combination labels.

    Returns
    -------
    list of list of str
        Held-out labels of each fold.

    Examples
    --------
    >>> kfold_perturbations(["A", "B", "C", "control"], n_folds=3)
    [['C'], ['B'], ['A']]
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    return _groups(_perturbation_labels(labels, tokens, separator), n_folds, seed, "labels")


def gears_splits(
    labels: Iterable[str],
    n_folds: int = 5,
    seed: int = 0,
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> list[list[str]]:
    """GEARS-style folds for data with combinations: unseen genes and unseen combinations.

    The genes that are perturbed alone (single labels) are sorted, permuted with
    ``default_rng(seed)`` and cut into ``n_folds`` consecutive groups ``G_k``; the combination
    labels are cut into ``n_folds`` groups ``C_k`` the same way (with ``seed + 1``). Fold ``k``
    holds out

    * the single labels of the genes in ``G_k`` (subgroup ``unseen_single``),
    * every combination with a member in ``G_k`` (``combo_seen0`` / ``combo_seen1``: none /
      one of its genes was perturbed alone in training), so that those genes are never seen,
    * the combinations of ``C_k`` without a member in ``G_k`` (``combo_seen2`` when both genes
      were perturbed alone in training).

    Every single label is held out exactly once; every combination at least once (as
    ``combo_seen2`` at most once). Use :func:`assign_subgroups` for the subgroup of each label.

    Parameters
    ----------
    labels
        Perturbation labels (per cell or distinct); control labels are dropped.
    n_folds
        Number of folds.
    seed
        Seed of the permutations.
    control_group, separator
        Label parsing.

    Returns
    -------
    list of list of str
        Held-out labels of each fold (sorted).
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    distinct = _perturbation_labels(labels, tokens, separator)
    genes_of = {label: parse_perturbation(label, separator, tokens) for label in distinct}
    singles = {label: genes[0] for label, genes in genes_of.items() if len(genes) == 1}
    combos = [label for label, genes in genes_of.items() if len(genes) > 1]
    if not singles:
        raise ValueError("gears splits need single-gene labels; use kfold_perturbations")
    gene_groups = _groups(set(singles.values()), n_folds, seed, "singly perturbed genes")
    combo_groups = (
        _groups(combos, n_folds, seed + 1, "combinations")
        if len(combos) >= n_folds
        else [combos if k == 0 else [] for k in range(n_folds)]
    )
    folds = []
    for unseen, combo_group in zip(gene_groups, combo_groups, strict=True):
        unseen_set = set(unseen)
        held = {label for label, gene in singles.items() if gene in unseen_set}
        held |= {c for c in combos if unseen_set.intersection(genes_of[c])}
        held |= set(combo_group)
        folds.append(sorted(held))
    return folds


def assign_subgroups(
    held_out: Iterable[str],
    train_labels: Iterable[str],
    *,
    control_group: str = "control",
    separator: str = DEFAULT_SEPARATOR,
) -> pd.Series:
    """GEARS subgroup of each held-out label, from the labels that training saw.

    A gene is *seen* when it was perturbed alone in training (a single-gene label among
    ``train_labels``). A held-out single label is ``unseen_single``; a held-out combination is
    ``combo_seen<m>`` with ``m`` its number of seen member genes (``combo_seen0``,
    ``combo_seen1``, ``combo_seen2``; a triple can reach ``combo_seen3``).

    Parameters
    ----------
    held_out
        Held-out labels.
    train_labels
        Labels of the training cells (per cell or distinct).
    control_group, separator
        Label parsing.

    Returns
    -------
    pandas.Series
        Subgroup per held-out label (index: the labels, in the given order).
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    seen = set()
    for label in pd.unique(np.asarray(list(train_labels), dtype=str)):
        genes = parse_perturbation(str(label), separator, tokens)
        if len(genes) == 1:
            seen.add(genes[0])
    out = {}
    for label in held_out:
        genes = parse_perturbation(str(label), separator, tokens)
        if len(genes) <= 1:
            out[str(label)] = "unseen_single"
        else:
            out[str(label)] = f"combo_seen{sum(g in seen for g in genes)}"
    return pd.Series(out, name="subgroup", dtype=object)
