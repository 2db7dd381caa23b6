"""Gene embedding tables: GO-annotation embeddings and readers for {gene: vector} files."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from ._go_sources import gene_term_matrix, read_gene2go
from ._loaders import PathLike

logger = logging.getLogger("pertx_scvi.graphs")


def go_embedding(
    gene2go: PathLike | pd.DataFrame,
    n_components: int = 64,
    genes: Sequence[str] | pd.Index | None = None,
    ontologies: Sequence[str] | None = ("BP", "MF", "CC"),
    exclude_evidence: Sequence[str] | None = ("ND",),
    idf: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    """Gene embeddings from GO annotations: truncated SVD of the gene x GO-term matrix.

    The binary gene x term matrix (all annotated genes) is weighted per term by
    ``idf = log(n_genes / n_genes_with_term)`` (rare terms count more; a term on every gene
    counts 0), factorised by a truncated SVD (:func:`scipy.sparse.linalg.svds`), and each
    gene's row ``U * S`` is L2-normalised, so that dot products are cosine similarities and
    genes with similar annotations are close. Component signs are fixed (the largest loading of
    each term vector positive) and components are ordered by singular value, so the result is
    deterministic.

    Parameters
    ----------
    gene2go
        Annotation table (``human_gene2go.tsv.gz`` layout: ``symbol``, ``go_id``, optional
        ``evidence``, ``ontology``) or such a DataFrame.
    n_components
        Embedding width. When the matrix is too small for that many components, the missing
        columns are zeros.
    genes
        Rows of the result, in this order. Genes without annotations get all-zero rows (norm 0;
        their count is logged). None: all annotated genes, sorted.
    ontologies
        GO aspects to use, when the table has an ``ontology`` column.
    exclude_evidence
        Evidence codes to ignore (``ND``: "no data" annotations to the root terms).
    idf
        Apply the idf term weighting (False: plain binary matrix).
    random_state
        Seed of the SVD's starting vector.

    Returns
    -------
    pd.DataFrame
        genes x ``n_components`` (float32), columns ``go_0``, ``go_1``..., index named ``gene``.
    """
    if n_components < 1:
        raise ValueError("n_components must be >= 1")
    ann = read_gene2go(gene2go, ontologies=ontologies, exclude_evidence=exclude_evidence)
    if ann.empty:
        raise ValueError("go_embedding: no annotations left after filtering")
    x, all_genes, _terms = gene_term_matrix(ann)
    x = x.astype(np.float64)
    if idf:
        n_t = np.asarray(x.sum(axis=0)).ravel()
        x = x @ sp.diags(np.log(x.shape[0] / n_t))
        x = sp.csr_matrix(x)
    k_max = min(x.shape) - 1
    k = min(n_components, k_max)
    if k >= 1 and min(x.shape) > 200:
        rng = np.random.default_rng(random_state)
        v0 = rng.standard_normal(min(x.shape))
        u, s, vt = svds(x, k=k, v0=v0)
    else:
        u, s, vt = np.linalg.svd(x.toarray(), full_matrices=False)
        k = min(n_components, len(s))
        u, s, vt = u[:, :k], s[:k], vt[:k]
    order = np.argsort(-s)
    u, s, vt = u[:, order], s[order], vt[order]
    flip = np.sign(vt[np.arange(len(s)), np.abs(vt).argmax(axis=1)])
    flip[flip == 0] = 1
    emb = u * (s * flip)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
    if emb.shape[1] < n_components:
        emb = np.hstack([emb, np.zeros((emb.shape[0], n_components - emb.shape[1]))])
    cols = [f"go_{i}" for i in range(n_components)]
    out = pd.DataFrame(emb.astype(np.float32), index=pd.Index(all_genes, name="gene"), columns=cols)
    if genes is not None:
        genes = pd.Index([str(g) for g in genes], name="gene")
        absent = int((~genes.isin(out.index)).sum())
        if absent:
            logger.info(
                "go_embedding: %d of %d genes have no GO annotation (zero rows)", absent, len(genes)
            )
        out = out.reindex(genes, fill_value=np.float32(0.0))
    return out


def _frame_from_mapping(obj: dict, where: str) -> pd.DataFrame:
    try:
        vecs = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in obj.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: dict values must be numeric vectors ({err})") from err
    widths = {len(v) for v in vecs.values()}
    if len(widths) > 1:
        raise ValueError(f"{where}: vectors of different lengths {sorted(widths)[:5]}")
    return pd.DataFrame.from_dict(vecs, orient="index")


def _read_text_vectors(path: Path) -> pd.DataFrame:
    """Whitespace-separated ``gene v1 v2 ...`` lines (word2vec text format; header optional)."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().split()
    skip = 1 if len(first) == 2 and all(f.isdigit() for f in first) else 0
    df = pd.read_csv(path, sep=r"\s+", header=None, skiprows=skip, index_col=0)
    return df


def read_gene_embedding(path: PathLike) -> pd.DataFrame:
    """Read a {gene: vector} table into a genes x dims DataFrame.

    Formats, by file name:

    - ``.parquet``: a DataFrame (genes in the index, or in a ``gene`` / ``symbol`` column);
      needs pyarrow or fastparquet.
    - ``.csv`` / ``.tsv`` (optionally ``.gz``): first column (or a ``gene`` / ``symbol``
      column) the genes, the other columns numbers.
    - ``.txt`` (optionally ``.gz``): whitespace-separated ``gene v1 v2 ...`` lines, with or
      without a word2vec ``n_genes dims`` first line (gene2vec files).
    - ``.npz``: arrays ``genes`` (names) and ``vectors`` (genes x dims).
    - ``.pkl`` / ``.pickle``: a dict ``{gene: vector}`` or a DataFrame. Only unpickle files you
      trust.

    Returns
    -------
    pd.DataFrame
        Float32 values; index = gene names (str, unique, named ``gene``).

    Raises
    ------
    ValueError
        For an unknown extension, a file that cannot be parsed, non-numeric values, or repeated
        genes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"gene embedding file not found: {path}")
    name = path.name.lower()
    base = name.removesuffix(".gz")
    try:
        if base.endswith(".parquet"):
            try:
                df = pd.read_parquet(path)
            except ImportError as err:
                raise ValueError(
                    f"{path}: reading parquet needs pyarrow or fastparquet ({err})"
                ) from err
            df = _gene_index(df, from_first_column=False)
        elif base.endswith((".csv", ".tsv", ".tab")):
            sep = "," if base.endswith(".csv") else "\t"
            df = _gene_index(pd.read_csv(path, sep=sep), from_first_column=True)
        elif base.endswith(".txt"):
            df = _read_text_vectors(path)
        elif base.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "genes" not in z or "vectors" not in z:
                    raise ValueError(
                        f"{path}: an .npz needs arrays 'genes' and 'vectors'; has {list(z.keys())}"
                    )
                genes = np.asarray(z["genes"]).astype(str)
                vectors = np.asarray(z["vectors"])
            if vectors.ndim != 2 or len(genes) != len(vectors):
                raise ValueError(
                    f"{path}: 'vectors' must be genes x dims with one row per gene; "
                    f"got {vectors.shape} for {len(genes)} genes"
                )
            df = pd.DataFrame(vectors, index=genes)
        elif base.endswith((".pkl", ".pickle")):
            with open(path, "rb") as fh:
                obj = pickle.load(fh)
            if isinstance(obj, pd.DataFrame):
                df = _gene_index(obj, from_first_column=False)
            elif isinstance(obj, dict):
                df = _frame_from_mapping(obj, str(path))
            else:
                raise ValueError(
                    f"{path}: a pickle must hold a dict or a DataFrame, not {type(obj).__name__}"
                )
        else:
            raise ValueError(
                f"{path}: unknown gene embedding format; use .parquet, .csv, .tsv, .txt, .npz "
                "or .pkl (optionally .gz for text)"
            )
    except ValueError:
        raise
    except (
        pd.errors.ParserError,
        UnicodeDecodeError,
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        KeyError,
    ) as err:
        raise ValueError(f"could not read gene embedding {path}: {err}") from err
    return _finish_embedding(df, str(path))


def _gene_index(df: pd.DataFrame, from_first_column: bool) -> pd.DataFrame:
    lower = {str(c).lower(): c for c in df.columns}
    for name in ("gene", "symbol", "gene_symbol", "gene_name", "genes"):
        if name in lower:
            return df.set_index(lower[name])
    if from_first_column and df.shape[1] > 1 and not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
        return df.set_index(df.columns[0])
    return df


def _finish_embedding(df: pd.DataFrame, where: str) -> pd.DataFrame:
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise ValueError(f"{where}: empty gene embedding")
    try:
        values = df.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: embedding values must be numeric ({err})") from err
    index = pd.Index(df.index.astype(str), name="gene")
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{where}: repeated genes {dup}")
    cols = [str(c) for c in df.columns]
    return pd.DataFrame(values, index=index, columns=cols)
