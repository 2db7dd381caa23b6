"""Perturbation labels (``"A"``, ``"A+B"``, ``"A+ctrl"``, ``"ctrl"``) parsed into gene sets."""

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

DEFAULT_SEPARATOR = "+"
DEFAULT_CONTROL_TOKENS: tuple[str, ...] = ("ctrl",)


def parse_perturbation(
    label: str,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Iterable[str] = DEFAULT_CONTROL_TOKENS,
) -> tuple[str, ...]:
    """Split a perturbation label into its sorted, unique member genes.

    Parameters
    ----------
    label
        A label such as ``"STAT1"``, ``"IRF1+JAK2"`` or the GEARS style ``"MEIS1+ctrl"``.
    separator
        Character joining the genes of a combination.
    control_tokens
        Tokens that stand for "no gene" (the control label and ``"ctrl"``).

    Returns
    -------
    The member genes, sorted; the empty tuple for a control label.

    Examples
    --------
    >>> parse_perturbation("B+A")
    ('A', 'B')
    >>> parse_perturbation("ctrl+A")
    ('A',)
    >>> parse_perturbation("ctrl")
    ()
    """
    if not isinstance(label, str):
        raise ValueError(f"perturbation label must be a string, got {label!r}")
    controls = {str(token) for token in control_tokens}
    parts = (part.strip() for part in label.split(separator))
    return tuple(sorted({part for part in parts if part and part not in controls}))


def canonical_label(
    label: str,
    separator: str = DEFAULT_SEPARATOR,
    control_tokens: Iterable[str] = DEFAULT_CONTROL_TOKENS,
) -> str:
    """Order-independent key of a label (``"B+A"``, ``"A+B"`` -> ``"A+B"``; control -> ``""``)."""
    return separator.join(parse_perturbation(label, separator, control_tokens))


def gene_set_matrix(
    gene_sets: Sequence[tuple[str, ...]],
    vocabulary: pd.Index,
) -> np.ndarray:
    """Encode gene sets as a padded matrix of vocabulary positions.

    Parameters
    ----------
    gene_sets
        One tuple of gene names per label (from :func:`parse_perturbation`).
    vocabulary
        The ordered perturbation-gene vocabulary; every gene must be in it.

    Returns
    -------
    ``int64`` array of shape ``(len(gene_sets), max_set_size)`` padded with ``-1``
    (at least one column, so control-only inputs keep a valid shape).
    """
    width = max([len(genes) for genes in gene_sets] + [1])
    matrix = np.full((len(gene_sets), width), -1, dtype=np.int64)
    for row, genes in enumerate(gene_sets):
        if genes:
            positions = vocabulary.get_indexer(list(genes))
            if (positions < 0).any():
                missing = [g for g, p in zip(genes, positions, strict=True) if p < 0]
                raise KeyError(f"genes {missing} are not in the perturbation vocabulary")
            matrix[row, : len(genes)] = positions
    return matrix
