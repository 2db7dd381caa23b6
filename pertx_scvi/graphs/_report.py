"""What a graph loader or an id mapping did: counts, samples of unmapped ids, dropped edges."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("pertx_scvi.graphs")

_SAMPLE = 20


@dataclass
class GraphReport:
    """Record of one graph-building step (a loader, :meth:`GeneGraph.map_ids`, a union...).

    Attributes
    ----------
    step
        What produced the graph, e.g. ``"from_omnipath(omnipath_interactions.csv.gz)"``.
    n_edges_read
        Edges (rows) read from the source, before any filtering.
    n_edges_kept
        Edges in the resulting edge table (after filtering, id mapping and merging duplicates).
    n_ids_mapped
        Node ids renamed to a current gene symbol.
    n_ids_unmapped
        Node ids that are not current symbols and could not be mapped (kept unless dropped).
    n_ids_ambiguous
        Node ids (mostly aliases) with several candidate symbols, none of them singled out.
    unmapped_sample, ambiguous_sample
        Up to 20 such ids (sorted).
    mapped_sample
        Up to 20 ``{old id: symbol}`` renamings.
    dropped
        Counts of what was dropped and why, e.g. ``{"complex_edges": 76734, "mirna_ids": 946}``.
    notes
        Free-text remarks.
    """

    step: str
    n_edges_read: int = 0
    n_edges_kept: int = 0
    n_ids_mapped: int = 0
    n_ids_unmapped: int = 0
    n_ids_ambiguous: int = 0
    unmapped_sample: list[str] = field(default_factory=list)
    ambiguous_sample: list[str] = field(default_factory=list)
    mapped_sample: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: edges read / kept, ids mapped / unmapped, what was dropped."""
        parts = [f"{self.step}: {self.n_edges_read:,} edges read, {self.n_edges_kept:,} kept"]
        if self.n_ids_mapped or self.n_ids_unmapped or self.n_ids_ambiguous:
            parts.append(
                f"ids mapped {self.n_ids_mapped:,}, unmapped {self.n_ids_unmapped:,}"
                f" (ambiguous {self.n_ids_ambiguous:,})"
            )
        if self.unmapped_sample:
            parts.append("unmapped e.g. " + ", ".join(self.unmapped_sample[:5]))
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{k}={v:,}" for k, v in self.dropped.items() if v))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return asdict(self)

    def log(self) -> GraphReport:
        """Log :meth:`summary` at INFO level on the ``pertx_scvi.graphs`` logger; returns self."""
        logger.info(self.summary())
        return self

    def __str__(self) -> str:
        return self.summary()


def sample(values, n: int = _SAMPLE) -> list[str]:
    """Sorted first ``n`` distinct values as strings."""
    return sorted({str(v) for v in values})[:n]
