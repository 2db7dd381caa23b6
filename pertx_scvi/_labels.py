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


def is_blank_label(label: str, separator: str = DEFAULT_SEPARATOR) -> bool:
    """Whether a label names nothing at all (``""``, ``" "``, ``"+"``, ``" + "``)."""
    return all(not part.strip() for part in str(label).split(separator))


def _shown(spellings: Sequence[str], limit: int = 5) -> str:
    text = ", ".join(repr(s) for s in spellings[:limit])
    return text + (f" and {len(spellings) - limit} more" if len(spellings) > limit else "")


def check_labels(
    counts: pd.Series,
    column: str,
    control_group: str,
    separator: str = DEFAULT_SEPARATOR,
    measured_genes: Iterable[str] | None = None,
) -> dict[str, list[str]]:
    """Check the labels of a perturbation column; return the gene sets spelled several ways.

    Parameters
    ----------
    counts
        Number of cells per label (``adata.obs[column].astype(str).value_counts()``).
    column
        Name of the column, for messages.
    control_group
        The control label (``"ctrl"`` is read as control too).
    separator
        Separator between the genes of a combination.
    measured_genes
        Names of the measured genes: a label gene that differs from one of them in case only
        is an error.

    Returns
    -------
    Representative spelling -> all spellings, for the gene sets named by several labels
    (``"A+B"`` and ``"B+A"``, ``"A"`` and ``"A "`` or ``"A+ctrl"``); see
    :func:`label_representatives`.

    Raises
    ------
    ValueError
        For labels that name no gene and are not the control (``""``, ``"+"``), naming the
        number of cells, and for a gene spelled in two cases (``stat1`` and ``STAT1``).
    """
    counts = counts[counts > 0]
    blank = [str(label) for label in counts.index if is_blank_label(label, separator)]
    if blank:
        n_cells = int(counts[blank].sum())
        raise ValueError(
            f"{n_cells} cells of adata.obs[{column!r}] have an empty perturbation label "
            f"({_shown(blank)}): label them with their gene(s), or with the control label "
            f"{control_group!r} if they are controls"
        )
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    genes_of = {
        str(label): parse_perturbation(str(label), separator, tokens) for label in counts.index
    }

    spelled: dict[str, dict[str, None]] = {}  # casefolded gene -> its spellings in the labels
    used_in: dict[str, str] = {}
    for label, genes in genes_of.items():
        for gene in genes:
            spelled.setdefault(gene.casefold(), {})[gene] = None
            used_in.setdefault(gene, label)
    for variants in spelled.values():
        if len(variants) > 1:
            a, b = list(variants)[:2]
            raise ValueError(
                f"adata.obs[{column!r}] names one gene in two spellings that differ in case: "
                f"{a!r} (label {used_in[a]!r}) and {b!r} (label {used_in[b]!r}); gene names "
                "are case-sensitive: use one spelling in every label"
            )
    if measured_genes is not None:
        measured = {str(g) for g in measured_genes}
        by_case = {g.casefold(): g for g in measured}
        for gene, label in used_in.items():
            other = by_case.get(gene.casefold())
            if gene not in measured and other is not None and other != gene:
                raise ValueError(
                    f"perturbation label {label!r} in adata.obs[{column!r}] names {gene!r}, "
                    f"but the measured gene is spelled {other!r}; gene names are "
                    f"case-sensitive: write {other!r} in the labels"
                )
    return {
        rep: spellings
        for rep, spellings in label_representatives(counts, control_group, separator).items()
        if len(spellings) > 1
    }


def label_representatives(
    counts: pd.Series, control_group: str, separator: str = DEFAULT_SEPARATOR
) -> dict[str, list[str]]:
    """Group labels by the gene set they name; key each group by one of its spellings.

    The control group keys the control labels; otherwise the order-free spelling
    (:func:`canonical_label`, e.g. ``"A+B"``) when it is one of the labels, else the spelling
    of most cells. Blank labels (:func:`is_blank_label`) are left out.

    Returns
    -------
    Representative -> spellings (the representative first, then by number of cells).
    """
    tokens = (*DEFAULT_CONTROL_TOKENS, str(control_group))
    groups: dict[tuple[str, ...], list[str]] = {}
    ordered = counts.sort_values(ascending=False, kind="stable")
    for label in ordered.index:
        label = str(label)
        if not is_blank_label(label, separator):
            groups.setdefault(parse_perturbation(label, separator, tokens), []).append(label)
    result = {}
    for genes, spellings in groups.items():
        canonical = separator.join(genes) if genes else str(control_group)
        rep = canonical if canonical in spellings or not genes else spellings[0]
        result[rep] = [rep, *[s for s in spellings if s != rep]]
    return result
