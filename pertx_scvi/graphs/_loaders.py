"""Readers for gene-graph sources; each returns a canonical edge table and a :class:`GraphReport`.
The GO sources (GEARS ``go.csv``, gene -> GO annotations) are in ``_go_sources``.

The canonical edge table has the columns ``source, target, relation, weight, sign, directed``:
``source``/``target`` strings, ``relation`` categorical, ``weight`` float32 > 0, ``sign`` int8 in
{+1, -1, 0} (0 = unknown), ``directed`` bool (False for symmetric relations such as GO
co-annotation or STRING, whose edges are read in both directions).
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._id_mapping import looks_like_uniprot
from ._report import GraphReport, sample

PathLike = str | os.PathLike
EDGE_COLUMNS = ["source", "target", "relation", "weight", "sign", "directed"]


# --------------------------------------------------------------------------- edge table helpers
def make_edges(source, target, relation, weight=None, sign=None, directed=True) -> pd.DataFrame:
    """Build a canonical edge table from columns (arrays / Series) or scalars."""
    source = np.asarray(source, dtype=object)
    n = len(source)
    df = pd.DataFrame(
        {
            "source": source,
            "target": np.asarray(target, dtype=object),
            "relation": np.broadcast_to(np.asarray(relation, dtype=object), (n,)),
            "weight": np.broadcast_to(
                np.asarray(1.0 if weight is None else weight, dtype=np.float32), (n,)
            ),
            "sign": np.broadcast_to(np.asarray(0 if sign is None else sign, dtype=np.int8), (n,)),
            "directed": np.broadcast_to(np.asarray(directed, dtype=bool), (n,)),
        }
    )
    return canonical_edges(df)


def canonical_edges(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in canonical order and dtypes (relation categorical with sorted categories)."""
    missing = [c for c in EDGE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"edge table lacks columns {missing}")
    rel = df["relation"]
    if isinstance(rel.dtype, pd.CategoricalDtype):
        codes = rel.cat.codes.to_numpy()
        cats = sorted(str(c) for c in rel.cat.categories[np.unique(codes[codes >= 0])])
        if (codes < 0).any() or list(rel.cat.categories) != cats:
            rel = pd.Categorical(rel.astype(str), categories=cats)
        else:
            rel = rel.array
    else:
        rel = pd.Categorical(rel.astype(str))
    return pd.DataFrame(
        {
            "source": _str_values(df["source"]),
            "target": _str_values(df["target"]),
            "relation": rel,
            "weight": df["weight"].to_numpy(dtype=np.float32),
            "sign": df["sign"].to_numpy(dtype=np.int8),
            "directed": df["directed"].to_numpy(dtype=bool),
        }
    )


def _str_values(col: pd.Series) -> np.ndarray:
    """Object array of Python strings (no copy when it is one already)."""
    values = col.to_numpy()
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    return col.astype(str).to_numpy(dtype=object)


def merge_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Merge rows with the same ``(relation, source, target)``.

    The merged edge keeps the largest weight; its sign is +1 (-1) when the merged rows carry only
    positive (negative) and unknown signs, and 0 when they disagree or are all unknown; it is
    directed when any merged row is.
    """
    key = ["relation", "source", "target"]
    dup = df.duplicated(key, keep=False).to_numpy()
    if not dup.any():
        return df.reset_index(drop=True)
    d = df[dup].assign(pos=lambda x: x["sign"] > 0, neg=lambda x: x["sign"] < 0)
    agg = (
        d.groupby(key, observed=True, sort=False)
        .agg(
            weight=("weight", "max"),
            pos=("pos", "max"),
            neg=("neg", "max"),
            directed=("directed", "max"),
        )
        .reset_index()
    )
    agg["sign"] = agg["pos"].astype(np.int8) - agg["neg"].astype(np.int8)
    merged = pd.concat([df[~dup], agg[EDGE_COLUMNS]], ignore_index=True)
    return canonical_edges(merged)


# --------------------------------------------------------------------------- file helpers
def _open_text(path: PathLike) -> io.TextIOBase:
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def sniff(path: PathLike) -> tuple[str, list[str]]:
    """Separator and first-line fields of a text table (gzip allowed).

    Raises
    ------
    ValueError
        When the file is not readable as text.
    """
    try:
        with _open_text(path) as fh:
            line = fh.readline(1 << 20)
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable text table ({err})") from err
    line = line.rstrip("\r\n")
    if "\x00" in line or not line.strip():
        raise ValueError(f"{path} is not a readable text table (empty or binary first line)")
    sep = "\t" if "\t" in line else "," if "," in line else " "
    fields = [f.strip().strip('"').lstrip("#") for f in line.split(sep)]
    return sep, fields


def _read_frame(path_or_df, what: str, **kwargs) -> tuple[pd.DataFrame, str]:
    """A DataFrame as it is, or a path read with pandas (separator sniffed unless given)."""
    if isinstance(path_or_df, pd.DataFrame):
        return path_or_df, f"{what}(DataFrame)"
    path = Path(path_or_df)
    if not path.exists():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    if "sep" not in kwargs:
        kwargs["sep"] = sniff(path)[0]
    try:
        df = pd.read_csv(path, **kwargs)
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as err:
        raise ValueError(f"{what}: could not read {path}: {err}") from err
    return df, f"{what}({path.name})"


def _require(df: pd.DataFrame, cols: Iterable[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; found {list(df.columns)}")


# --------------------------------------------------------------------------- OmniPath
_OMNI_COLUMNS = (
    "source",
    "target",
    "type",
    "is_directed",
    "consensus_stimulation",
    "consensus_inhibition",
    "is_stimulation",
    "is_inhibition",
    "n_references",
)


def _expand_complexes(df: pd.DataFrame) -> pd.DataFrame:
    """Replace ``COMPLEX:A_B_C`` ends by one edge per member (complex-complex: all pairs)."""
    for col in ("source", "target"):
        s = df[col]
        is_cx = s.str.startswith("COMPLEX:")
        members = s.where(~is_cx, s.str.slice(8).str.split("_"))
        df = df.assign(**{col: members}).explode(col, ignore_index=True)
    return df


def read_omnipath(
    path,
    types: Sequence[str] | None = None,
    complexes: str = "drop",
) -> tuple[pd.DataFrame, GraphReport]:
    """OmniPath interactions (``source,target,...,type``); see :meth:`GeneGraph.from_omnipath`."""
    df, step = _read_frame(
        path,
        "from_omnipath",
        usecols=lambda c: c in _OMNI_COLUMNS,
        low_memory=False,
        keep_default_na=False,
        na_values=[""],
    )
    if isinstance(path, pd.DataFrame):
        df = df[[c for c in df.columns if c in _OMNI_COLUMNS]]
    _require(df, ["source", "target"], step)
    n_read = len(df)
    rep = GraphReport(step, n_edges_read=n_read)
    if "type" not in df.columns:
        df = df.assign(type="interaction")
    df = df.assign(
        source=df["source"].astype(str),
        target=df["target"].astype(str),
        type=df["type"].astype(str),
    )
    if types is not None:
        wanted = [
            t.removeprefix("omnipath_") for t in ([types] if isinstance(types, str) else types)
        ]
        have = sorted(df["type"].unique())
        unknown = sorted(set(wanted) - set(have))
        if unknown:
            raise ValueError(f"{step}: unknown OmniPath types {unknown}; the file has {have}")
        before = len(df)
        df = df[df["type"].isin(wanted)]
        rep.dropped["other_type_edges"] = before - len(df)
    # miRNAs (MIMAT ids): not genes of the graph
    mi_s = df["source"].str.startswith("MIMAT")
    mi_t = df["target"].str.startswith("MIMAT")
    is_mi = (mi_s | mi_t).to_numpy()
    rep.dropped["mirna_edges"] = int(is_mi.sum())
    rep.dropped["mirna_ids"] = int(
        pd.concat([df.loc[mi_s, "source"], df.loc[mi_t, "target"]]).nunique()
    )
    df = df[~is_mi]
    cx_s = df["source"].str.startswith("COMPLEX:")
    cx_t = df["target"].str.startswith("COMPLEX:")
    is_cx = (cx_s | cx_t).to_numpy()
    rep.dropped["complex_ids"] = int(
        pd.concat([df.loc[cx_s, "source"], df.loc[cx_t, "target"]]).nunique()
    )
    if complexes == "drop":
        rep.dropped["complex_edges"] = int(is_cx.sum())
        df = df[~is_cx]
    elif complexes == "expand":
        before = len(df)
        df = _expand_complexes(df)
        rep.notes.append(f"complex edges expanded to members: {before:,} -> {len(df):,} rows")
    else:
        raise ValueError(f"complexes must be 'drop' or 'expand', not {complexes!r}")

    def flag(name: str, fallback: str | None = None) -> np.ndarray:
        col = name if name in df.columns else fallback
        if col is None or col not in df.columns:
            return np.zeros(len(df), dtype=bool)
        if df[col].dtype == bool:
            return df[col].to_numpy()
        return df[col].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()

    stim = flag("consensus_stimulation", "is_stimulation")
    inh = flag("consensus_inhibition", "is_inhibition")
    sign = stim.astype(np.int8) - inh.astype(np.int8)
    nref = (
        pd.to_numeric(df["n_references"], errors="coerce").fillna(0.0).to_numpy()
        if "n_references" in df.columns
        else np.zeros(len(df))
    )
    weight = 1.0 + np.log1p(np.maximum(nref, 0.0))
    directed = flag("is_directed") if "is_directed" in df.columns else True
    edges = make_edges(
        df["source"],
        df["target"],
        "omnipath_" + df["type"].to_numpy(dtype=object),
        weight,
        sign,
        directed,
    )
    edges = merge_duplicates(edges)
    rep.n_edges_kept = len(edges)
    return edges, rep


# --------------------------------------------------------------------------- TRRUST
_TRRUST_SIGN = {"activation": 1, "repression": -1, "unknown": 0}


def read_trrust(path) -> tuple[pd.DataFrame, GraphReport]:
    """TRRUST v2 (``Gene1 Gene2 Mode_of_Regulation PMID``, with or without the header line)."""
    if isinstance(path, pd.DataFrame):
        df, step = path, "from_trrust(DataFrame)"
    else:
        _sep, fields = sniff(path)
        header = 0 if "Mode_of_Regulation" in fields or "Gene1" in fields else None
        df, step = _read_frame(
            path, "from_trrust", sep="\t", header=header, dtype=str, keep_default_na=False
        )
    if "Gene1" not in df.columns:
        if df.shape[1] < 3:
            raise ValueError(f"{step}: expected 4 tab-separated columns TF, target, mode, PMIDs")
        df = df.iloc[:, :4].copy()
        df.columns = ["Gene1", "Gene2", "Mode_of_Regulation", "PMID"][: df.shape[1]]
    _require(df, ["Gene1", "Gene2", "Mode_of_Regulation"], step)
    n = len(df)
    mode = df["Mode_of_Regulation"].astype(str).str.lower().map(_TRRUST_SIGN).fillna(0)
    pmids = df["PMID"].astype(str) if "PMID" in df.columns else pd.Series("", index=df.index)
    long = pd.DataFrame(
        {"s": df["Gene1"].astype(str), "t": df["Gene2"].astype(str), "pmid": pmids.str.split(";")}
    ).explode("pmid")
    long = long[long["pmid"].str.strip().fillna("") != ""]
    n_pmid = long.drop_duplicates().groupby(["s", "t"]).size()
    frame = pd.DataFrame(
        {
            "s": df["Gene1"].astype(str),
            "t": df["Gene2"].astype(str),
            "pos": (mode > 0).to_numpy(),
            "neg": (mode < 0).to_numpy(),
        }
    )
    agg = frame.groupby(["s", "t"], sort=False).agg(pos=("pos", "max"), neg=("neg", "max"))
    cnt = n_pmid.reindex(agg.index).fillna(0).to_numpy()
    sign = agg["pos"].to_numpy().astype(np.int8) - agg["neg"].to_numpy().astype(np.int8)
    edges = make_edges(
        agg.index.get_level_values(0),
        agg.index.get_level_values(1),
        "trrust",
        1.0 + np.log1p(cnt),
        sign,
        True,
    )
    rep = GraphReport(step, n_edges_read=n, n_edges_kept=len(edges))
    if n - len(edges):
        rep.notes.append(f"{n - len(edges):,} rows repeat a TF-target pair (other mode): merged")
    return edges, rep


# --------------------------------------------------------------------------- STRING
STRING_CHANNELS = (
    "neighborhood",
    "fusion",
    "cooccurence",
    "coexpression",
    "experiments",
    "database",
    "textmining",
)
_STRING_ALIASES = {"experimental": "experiments", "combined_score": "combined"}


def _string_info(info) -> pd.Series:
    df, step = _read_frame(info, "string_info", sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.lstrip("#") for c in df.columns]
    idcol = next(
        (c for c in ("string_protein_id", "protein_external_id") if c in df.columns), df.columns[0]
    )
    if "preferred_name" not in df.columns:
        raise ValueError(f"{step}: needs a 'preferred_name' column; found {list(df.columns)}")
    return pd.Series(df["preferred_name"].to_numpy(), index=df[idcol].to_numpy())


def read_string(
    links,
    info=None,
    threshold: float = 0.4,
    channels: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, GraphReport]:
    """STRING ``protein.links.detailed`` / ``.full`` file; see :meth:`GeneGraph.from_string`."""
    if isinstance(links, pd.DataFrame):
        df, step = links, "from_string(DataFrame)"
    else:
        _sep, fields = sniff(links)
        named = "gene1" in fields and "gene2" in fields
        pair = ("gene1", "gene2") if named else ("protein1", "protein2")
        if pair[0] not in fields or pair[1] not in fields:
            raise ValueError(
                f"{links}: not a STRING links file (expected a header 'protein1 protein2 ...' "
                f"or a symbol table 'gene1 gene2 ...'); first line has {fields[:6]}"
            )
        text_cols = {*pair, "entrez1", "entrez2"}
        score_cols = [f for f in fields if f not in text_cols]
        df, step = _read_frame(
            links,
            "from_string",
            sep=r"\s+" if _sep == " " else _sep,
            dtype={
                pair[0]: "category",
                pair[1]: "category",
                **{c: np.int32 for c in score_cols},
            },
            usecols=[*pair, *score_cols],
        )
    named = "gene1" in df.columns and "gene2" in df.columns
    if named:  # STRING as a table of gene symbols (e.g. dmfind's string.v12 tables)
        df = df.drop(columns=["entrez1", "entrez2"], errors="ignore")
        df = df.rename(columns={"gene1": "protein1", "gene2": "protein2"})
    _require(df, ["protein1", "protein2"], step)
    rename = {c: _STRING_ALIASES.get(c, c) for c in df.columns}
    df = df.rename(columns=rename)
    available = [c for c in df.columns if c not in ("protein1", "protein2")]
    if channels is None:
        use = [c for c in STRING_CHANNELS if c in df.columns]
        if not use and "combined" in df.columns:
            use = ["combined"]
    else:
        use = [
            _STRING_ALIASES.get(c, c)
            for c in ([channels] if isinstance(channels, str) else channels)
        ]
        unknown = [c for c in use if c not in df.columns]
        if unknown:
            raise ValueError(f"{step}: unknown STRING channels {unknown}; the file has {available}")
    n_read = len(df)
    rep = GraphReport(step, n_edges_read=n_read)
    # integer codes of the protein ids (the files are large: avoid per-row strings)
    c1, c2 = df["protein1"], df["protein2"]
    if isinstance(c1.dtype, pd.CategoricalDtype) and isinstance(c2.dtype, pd.CategoricalDtype):
        ids = c1.cat.categories.union(c2.cat.categories)
        s_code = ids.get_indexer(c1.cat.categories)[c1.cat.codes.to_numpy()]
        t_code = ids.get_indexer(c2.cat.categories)[c2.cat.codes.to_numpy()]
    else:
        codes, ids = pd.factorize(pd.concat([c1.astype(str), c2.astype(str)], ignore_index=True))
        s_code, t_code = codes[: len(df)], codes[len(df) :]
    ids = pd.Index(ids.astype(str))
    if named:
        new = ids.to_numpy(dtype=object)
    elif info is not None:
        names = _string_info(info)
        names = names[~names.index.duplicated()]
        mapped = names.reindex(ids)
        unmapped = ids[mapped.isna().to_numpy()]
        rep.n_ids_mapped = int(len(ids) - len(unmapped))
        rep.n_ids_unmapped = len(unmapped)
        rep.unmapped_sample = sample(unmapped)
        new = np.where(mapped.isna(), ids.to_numpy(), mapped.to_numpy(dtype=object))
    else:
        new = ids.str.replace(r"^\d+\.", "", regex=True).to_numpy(dtype=object)
        rep.notes.append(
            "no protein.info file: nodes are Ensembl protein ids (taxon prefix removed)"
        )
    new = new.astype(object)
    parts = []
    for ch in use:
        score = pd.to_numeric(df[ch], errors="coerce").to_numpy(dtype=np.float64) / 1000.0
        keep = (score >= threshold) & (score > 0)
        s, t = new[s_code[keep]], new[t_code[keep]]
        swap = s > t  # undirected: one orientation per pair (source < target)
        s, t = np.where(swap, t, s), np.where(swap, s, t)
        parts.append(make_edges(s, t, f"string_{ch}", score[keep], 0, False))
    edges = pd.concat(parts, ignore_index=True) if parts else make_edges([], [], "string")
    edges = merge_duplicates(canonical_edges(edges))
    rep.n_edges_kept = len(edges)
    rep.notes.append(f"channels {use} at score >= {threshold}")
    return edges, rep


# --------------------------------------------------------------------------- generic edge lists
_SIGN_WORDS = {
    "+": 1,
    "activation": 1,
    "stimulation": 1,
    "positive": 1,
    "activating": 1,
    "up": 1,
    "-": -1,
    "repression": -1,
    "inhibition": -1,
    "negative": -1,
    "inhibiting": -1,
    "down": -1,
}


def coerce_sign(values) -> np.ndarray:
    """Signs from numbers (their sign) or words (activation / repression / + / - ...); else 0."""
    s = pd.Series(values)
    num = pd.to_numeric(s, errors="coerce")
    words = s.astype(str).str.strip().str.lower().map(_SIGN_WORDS)
    out = np.sign(num.fillna(words).fillna(0).to_numpy(dtype=np.float64))
    return out.astype(np.int8)


def edges_from_frame(
    df: pd.DataFrame,
    source: str = "source",
    target: str = "target",
    weight: str | None = None,
    relation: str = "custom",
    sign: str | None = None,
    directed: bool | str = True,
) -> tuple[pd.DataFrame, GraphReport]:
    """Generic edge list; see :meth:`GeneGraph.from_edges`."""
    step = "from_edges"
    _require(df, [source, target], step)
    n = len(df)
    rel = df[relation].astype(str).to_numpy(dtype=object) if relation in df.columns else relation
    if weight is None:
        w = np.ones(n)
    else:
        _require(df, [weight], step)
        w = pd.to_numeric(df[weight], errors="coerce").to_numpy(dtype=np.float64)
    sg = np.zeros(n, np.int8) if sign is None else coerce_sign(df[sign].to_numpy())
    if isinstance(directed, str):
        _require(df, [directed], step)
        dr = df[directed].astype(str).str.lower().isin(["true", "1", "1.0", "yes"]).to_numpy()
    else:
        dr = bool(directed)
    ok = (w > 0) & df[source].notna().to_numpy() & df[target].notna().to_numpy()
    edges = make_edges(
        df[source].to_numpy()[ok],
        df[target].to_numpy()[ok],
        rel if isinstance(rel, str) else rel[ok],
        w[ok],
        sg[ok],
        dr if isinstance(dr, bool) else dr[ok],
    )
    edges = merge_duplicates(edges)
    rep = GraphReport(step, n_edges_read=n, n_edges_kept=len(edges))
    if n - ok.sum():
        rep.dropped["nonpositive_or_missing_weight"] = int(n - ok.sum())
    return edges, rep


# --------------------------------------------------------------------------- format detection
FORMATS = {
    "gears_go": "GEARS go.csv: source,target,importance",
    "go_annotations": "gene -> GO annotations: symbol (or gene), go_id [, evidence, ontology]",
    "omnipath": "OmniPath interactions: source,target,...,consensus_stimulation,...,type",
    "trrust": "TRRUST: Gene1 Gene2 Mode_of_Regulation PMID (tab-separated; or the raw file)",
    "string": "STRING protein.links.detailed/full: protein1 protein2 <channels> combined_score",
    "edges": "edge table: source,target[,relation,weight,sign,directed] (GeneGraph.write)",
}


def detect_format(path: PathLike) -> str:
    """Name of the graph format of a file (a key of ``FORMATS``), from its header and name."""
    name = Path(path).name.lower()
    sep, fields = sniff(path)
    cols = {f.lower() for f in fields}
    if {"protein1", "protein2"} <= cols:
        return "string"
    if {"gene1", "gene2"} <= cols or ("trrust" in name and len(fields) == 4):
        return "trrust"
    if "go_id" in cols and cols & {"symbol", "gene", "gene_symbol", "gene_name"}:
        return "go_annotations"
    if {"source", "target"} <= cols:
        if cols & {"consensus_stimulation", "is_stimulation", "n_references"}:
            return "omnipath"
        if "importance" in cols and not cols & {"relation", "weight"}:
            return "gears_go"
        return "edges"
    known = "\n  ".join(f"{k}: {v}" for k, v in FORMATS.items())
    raise ValueError(
        f"cannot tell the graph format of {path} (first line fields {fields[:8]}, "
        f"separator {sep!r}); known formats:\n  {known}"
    )


def unmapped_uniprot_note(nodes) -> str | None:
    """A note when nodes look like UniProt accessions (no id table given)."""
    n = int(looks_like_uniprot(nodes).sum())
    if n:
        return f"{n:,} node ids look like UniProt accessions; pass id_table= to map them to symbols"
    return None
