"""Gene tokens: a gene-identity embedding plus an encoding of the gene's expression value."""

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

ValueEncoding = Literal["continuous", "binned"]


class ContinuousValueEncoder(nn.Module):
    """Maps a scalar (log-normalised expression) to a d_model vector through a small MLP."""

    def __init__(self, d_model: int, max_value: float = 10.0):
        super().__init__()
        self.max_value = max_value
        self.net = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(values.clamp(max=self.max_value).unsqueeze(-1)))


class BinnedValueEncoder(nn.Module):
    """scGPT-style value bins: a cell's nonzero values are ranked and cut into ``n_bins - 1``
    equal-frequency bins (bin 0 = not expressed), each bin a learned vector. Robust to depth."""

    def __init__(self, d_model: int, n_bins: int = 51):
        super().__init__()
        self.n_bins = n_bins
        self.embedding = nn.Embedding(n_bins, d_model)

    def bins(self, values: torch.Tensor) -> torch.Tensor:
        """(batch, n) bin index of every value, per-cell quantiles of the nonzero values."""
        expressed = values > 0
        # Rank of each value within its cell; zeros sort first and get bin 0.
        ranks = values.argsort(-1).argsort(-1).float()
        n_zero = (~expressed).sum(-1, keepdim=True).float()
        n_expressed = expressed.sum(-1, keepdim=True).clamp(min=1).float()
        quantile = (ranks - n_zero + 1) / n_expressed
        binned = (quantile * (self.n_bins - 1)).ceil().clamp(1, self.n_bins - 1).long()
        return torch.where(expressed, binned, 0)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.bins(values))


class GeneHybridEmbedding(nn.Module):
    """Gene-token table: pretrained vectors (frozen) for the genes found, learned for the others.

    Rows of the genes found in a pretrained table hold that table's vector and get no
    gradient: they sit in a buffer (``pretrained``), outside the optimiser, so that neither
    gradients nor weight decay move them. The other rows are the parameter ``weight``,
    initialised as :class:`torch.nn.Embedding` does (N(0, 1)). The two are combined with
    :func:`torch.where` on the ``found`` mask. :meth:`unfreeze` copies the pretrained rows into
    ``weight`` and trains every row; :meth:`freeze` fixes the found rows again at their current
    values. Without a table this is :class:`torch.nn.Embedding` (same parameter, same
    initialisation, same state-dict key ``weight``).

    The table must already be ``d_model`` wide: its projection (e.g. PCA, scaling) is done once
    when the model is built (:class:`~pertx_scvi.PertTX` ``gene_token_embedding``), so that
    frozen rows are fixed token vectors, not the output of a trained map.

    Parameters
    ----------
    n_genes
        Number of gene tokens (rows).
    d_model
        Width of the vectors.
    table
        (n_genes, d_model) pretrained vectors; rows where ``found`` is False are ignored.
        None: every row learned.
    found
        (n_genes,) bool, the rows of ``table`` that hold a vector. Default: the rows of
        ``table`` that are finite and not all zero.
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int,
        table: torch.Tensor | None = None,
        found: torch.Tensor | None = None,
    ):
        super().__init__()
        self.n_genes, self.d_model = n_genes, d_model
        # As nn.Embedding: same parameter, same init (same random draws), same state-dict key.
        self.weight = nn.Parameter(torch.empty(n_genes, d_model))
        nn.init.normal_(self.weight)
        if table is None:
            if found is not None:
                raise ValueError("GeneHybridEmbedding: found= needs a table=")
            self.pretrained = self.found = self.frozen = None
            return
        table = torch.as_tensor(table, dtype=torch.float32)
        if table.shape != (n_genes, d_model):
            raise ValueError(
                f"GeneHybridEmbedding: table must be (n_genes, d_model) = ({n_genes}, "
                f"{d_model}), got {tuple(table.shape)} (project it to d_model first)"
            )
        finite = torch.isfinite(table).all(1)
        if found is None:
            found = finite & (table.abs().sum(1) > 0)
        found = torch.as_tensor(found, dtype=torch.bool)
        if found.shape != (n_genes,):
            raise ValueError(f"GeneHybridEmbedding: found must be ({n_genes},) booleans")
        if not finite[found].all():
            raise ValueError("GeneHybridEmbedding: found rows of the table are not finite")
        pretrained = torch.where(found[:, None], table, 0.0)
        self.register_buffer("pretrained", pretrained)
        self.register_buffer("found", found)
        # A buffer, so that the state (and fine-tuned rows) travel with the state dict.
        self.register_buffer("frozen", torch.tensor(True))
        with torch.no_grad():
            self.weight[found] = pretrained[found]

    @property
    def has_table(self) -> bool:
        """Whether the table has pretrained rows (``found``)."""
        return self.found is not None

    @property
    def n_pretrained(self) -> int:
        """Number of rows with a pretrained vector."""
        return 0 if self.found is None else int(self.found.sum())

    @property
    def is_frozen(self) -> bool:
        """Whether the pretrained rows are fixed (False without a table: all rows learned)."""
        return self.frozen is not None and bool(self.frozen)

    def unfreeze(self) -> None:
        """Train every row: the pretrained rows become trainable, starting from their vectors.

        Takes effect at the next optimiser step (the rows are part of ``weight``, which the
        optimiser always holds); does nothing when already unfrozen or without a table.
        """
        if not self.is_frozen:
            return
        with torch.no_grad():
            self.weight[self.found] = self.pretrained[self.found]
            self.frozen.fill_(False)

    def freeze(self) -> None:
        """Fix the found rows again, at their current (possibly fine-tuned) values."""
        if self.frozen is None or self.is_frozen:
            return
        with torch.no_grad():
            self.pretrained[self.found] = self.weight[self.found]
            self.frozen.fill_(True)

    def table(self) -> torch.Tensor:
        """(n_genes, d_model) current token vectors (pretrained rows where frozen)."""
        if self.found is None:
            return self.weight
        # No host sync: the frozen flag enters the mask on the device.
        fixed = (self.found & self.frozen)[:, None]
        return torch.where(fixed, self.pretrained, self.weight)

    def forward(self, genes: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of ``genes`` (any shape of positions; ``(*genes.shape, d_model)``), or the
        whole table when None."""
        table = self.table()
        return table if genes is None else F.embedding(genes, table)

    def extra_repr(self) -> str:
        extra = (
            f", pretrained={self.n_pretrained}, frozen={self.is_frozen}"
            if self.found is not None
            else ""
        )
        return f"{self.n_genes}, {self.d_model}{extra}"


def select_tokens(values: torch.Tensor, max_genes: int, random: bool = True) -> torch.Tensor:
    """Gene positions (batch, max_genes) per cell: expressed genes first, then zeros.

    ``random=True`` (training): a random subset of the expressed genes when a cell expresses
    more than ``max_genes``, and random zeros to fill the rest, redrawn at every call.
    ``random=False`` (inference): the most expressed genes, and zeros in a fixed gene order
    (a hash of the gene position), so that a cell always gets the same tokens.
    """
    if random:
        priority = (values > 0).float() + torch.rand_like(values) * 0.5
    else:
        position = torch.arange(values.shape[-1], device=values.device)
        # Knuth's multiplicative hash spreads the fixed zero choice over the gene list.
        tiebreak = ((position * 2654435761) % 1000003).float() / 1000003
        scale = values.amax(-1, keepdim=True).clamp(min=1e-6)
        priority = (values > 0).float() + 0.5 * values / scale + 0.01 * tiebreak
    return priority.topk(max_genes, dim=-1, sorted=False).indices


class ExpressionTokenizer(nn.Module):
    """Turns a batch of expression profiles into token sequences with a leading CLS token.

    Token ``g`` of a cell is ``gene_embedding[g] + value_encoder(x_g)``; masked positions replace
    the value part by a learned mask vector, so the identity of a hidden gene stays visible while
    its value does not (scGPT-style masked expression modelling). ``gene_embedding`` is a
    :class:`GeneHybridEmbedding`: learned rows, and pretrained frozen rows for the genes of
    ``gene_table`` (``table_found``) when one is given.
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int,
        dropout: float = 0.0,
        value_encoding: ValueEncoding = "continuous",
        n_bins: int = 51,
        gene_table: torch.Tensor | None = None,
        table_found: torch.Tensor | None = None,
    ):
        super().__init__()
        if value_encoding not in ("continuous", "binned"):
            raise ValueError(f"value_encoding must be 'continuous' or 'binned': {value_encoding!r}")
        self.gene_embedding = GeneHybridEmbedding(n_genes, d_model, gene_table, table_found)
        self.value_encoding = value_encoding
        if value_encoding == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model)
        else:
            self.value_encoder = BinnedValueEncoder(d_model, n_bins)
        self.mask_vector = nn.Parameter(torch.zeros(d_model))
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        genes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (batch, n_tokens + 1, d_model).

        ``values`` (batch, n_genes) log-normalised expression of all genes; ``genes``
        (batch, n_tokens) the gene positions to tokenise (all genes when None); ``mask``
        (batch, n_tokens) True where the value is hidden.
        """
        if self.value_encoding == "binned":
            # Bins are per-cell quantiles over all genes, before any token selection.
            value_part = self.value_encoder.embedding(self.value_encoder.bins(values))
            if genes is not None:
                value_part = value_part.gather(
                    1, genes.unsqueeze(-1).expand(-1, -1, value_part.shape[-1])
                )
        else:
            selected = values if genes is None else values.gather(1, genes)
            value_part = self.value_encoder(selected)
        if mask is not None:
            value_part = torch.where(mask.unsqueeze(-1), self.mask_vector, value_part)
        identity = self.gene_embedding(genes)
        tokens = value_part + identity
        cls = self.cls.expand(values.shape[0], 1, -1)
        return self.dropout(torch.cat([cls, tokens], dim=1))
