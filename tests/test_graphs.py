"""Tests of pertx_scvi.graphs: loaders on the real files, id mapping, graph operations, to_pyg."""

from __future__ import annotations

import gzip
import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from pertx_scvi.graphs import (
    GeneGraph,
    GraphReport,
    go_embedding,
    read_gene_embedding,
    target_coverage,
)
from pertx_scvi.graphs._go_sources import gene_term_matrix, topk_jaccard

IFN = ["IFNG", "IFNGR1", "IFNGR2", "JAK1", "JAK2", "STAT1", "IRF1"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def graph_dir(data_dir):
    path = data_dir / "graphs"
    if not path.is_dir():
        pytest.skip(f"no graphs/ folder in {data_dir}")
    return path


@pytest.fixture(scope="session")
def id_table_path(graph_dir):
    return graph_dir / "human_gene_ids.tsv.gz"


@pytest.fixture(scope="session")
def go_graph(graph_dir):
    return GeneGraph.from_gears_go(graph_dir / "go_top20_jaccard.csv.gz")


@pytest.fixture(scope="session")
def omnipath(graph_dir, id_table_path):
    return GeneGraph.from_omnipath(
        graph_dir / "omnipath_interactions.csv.gz", id_table=id_table_path
    )


@pytest.fixture(scope="session")
def trrust(graph_dir):
    return GeneGraph.from_trrust(graph_dir / "trrust_v2_human.tsv")


@pytest.fixture(scope="session")
def go_emb(graph_dir):
    return go_embedding(graph_dir / "human_gene2go.tsv.gz", n_components=32)


def edge(g: GeneGraph, s: str, t: str, relation: str | None = None) -> pd.DataFrame:
    e = g.edges
    m = (e["source"] == s) & (e["target"] == t)
    if relation is not None:
        m &= e["relation"] == relation
    return e[m]


def small_graph() -> GeneGraph:
    df = pd.DataFrame(
        {
            "source": ["A", "B", "C", "A", "X"],
            "target": ["B", "C", "D", "C", "Y"],
            "relation": ["r1", "r1", "r1", "r2", "r2"],
            "weight": [1.0, 2.0, 3.0, 0.5, 1.0],
            "sign": [1, -1, 0, 1, 0],
        }
    )
    return GeneGraph.from_edges(df, weight="weight", relation="relation", sign="sign")


# --------------------------------------------------------------------------- real loaders
def test_gears_go(go_graph):
    g = go_graph
    assert g.n_edges == 409_189
    assert g.n_genes == 20_676
    assert g.relations == ["go"]
    assert g.report.n_edges_read == 409_189 and g.report.n_edges_kept == 409_189
    e = edge(g, "IFNGR1", "IFNGR2")
    assert len(e) == 1 and e["weight"].iloc[0] == pytest.approx(5 / 12, abs=1e-6)
    assert "IFNGR2" in g.neighbors("IFNGR1")
    assert not g.edges["directed"].any()
    assert (g.edges["sign"] == 0).all()
    assert g.edges["weight"].between(0.1, 1.0).all()
    assert (
        GeneGraph.from_gears_go(
            pd.DataFrame({"source": ["A", "B"], "target": ["B", "A"], "importance": [0.05, 0.5]}),
            min_weight=0.1,
        ).n_edges
        == 1
    )


def test_omnipath(omnipath):
    g = omnipath
    assert g.relations == ["omnipath_post_translational", "omnipath_transcriptional"]
    rep = g.report
    assert rep.n_edges_read == 278_579
    assert 150_000 < g.n_edges < 200_000
    assert rep.dropped["complex_edges"] > 70_000 and rep.dropped["complex_ids"] == 1_355
    assert rep.dropped["mirna_ids"] == 946 and rep.dropped["mirna_edges"] > 15_000
    assert rep.n_ids_mapped > 3_000  # UniProt accessions -> symbols
    assert 0 < rep.n_ids_unmapped < 500 and rep.unmapped_sample
    genes = g.genes
    assert not genes.str.startswith("COMPLEX:").any()
    assert not genes.str.startswith("MIMAT").any()
    assert "O14746" not in g and "TERT" in g  # MYC -> O14746 (TERT) in the file
    assert len(edge(g, "MYC", "TERT", "omnipath_transcriptional")) == 1
    # the IFN-gamma pathway
    for s, t in [("IFNG", "IFNGR1"), ("IFNGR1", "JAK2"), ("JAK2", "STAT1"), ("JAK1", "STAT1")]:
        e = edge(g, s, t, "omnipath_post_translational")
        assert len(e) == 1, (s, t)
        assert e["sign"].iloc[0] == 1
        assert e["weight"].iloc[0] > 1
    assert g.edges["directed"].all()
    assert set(np.unique(g.edges["sign"])) == {-1, 0, 1}
    assert (g.edges["weight"] >= 1).all()
    assert not g.edges.duplicated(["relation", "source", "target"]).any()


def test_omnipath_small_frame(id_table_path):
    df = pd.DataFrame(
        {
            "source": ["P60484", "COMPLEX:ATF2_JUN", "MIMAT0000062", "STAT1", "PTEN"],
            "target": ["STAT1", "FOS", "KRAS", "IRF1", "STAT1"],
            "is_directed": [True] * 5,
            "consensus_stimulation": [False, True, False, True, False],
            "consensus_inhibition": [True, False, False, True, False],
            "n_references": [3.0, 1.0, np.nan, np.nan, 1.0],
            "type": [
                "post_translational",
                "transcriptional",
                "post_transcriptional",
                "transcriptional",
                "post_translational",
            ],
        }
    )
    g = GeneGraph.from_omnipath(df, id_table=id_table_path)
    rep = g.report
    assert rep.dropped["complex_edges"] == 1 and rep.dropped["mirna_edges"] == 1
    assert rep.mapped_sample == {"P60484": "PTEN"}
    # P60484 -> PTEN merges with the PTEN -> STAT1 row: largest weight, known sign kept
    e = edge(g, "PTEN", "STAT1")
    assert len(e) == 1
    assert e["weight"].iloc[0] == pytest.approx(1 + np.log1p(3))
    assert e["sign"].iloc[0] == -1
    assert edge(g, "STAT1", "IRF1")["sign"].iloc[0] == 0  # stimulation and inhibition
    assert edge(g, "STAT1", "IRF1")["weight"].iloc[0] == pytest.approx(1.0)
    expanded = GeneGraph.from_omnipath(df, complexes="expand", types=["transcriptional"])
    assert set(expanded.neighbors("FOS")) == {"ATF2", "JUN"}
    assert expanded.relations == ["omnipath_transcriptional"]
    with pytest.raises(ValueError, match="unknown OmniPath types"):
        GeneGraph.from_omnipath(df, types=["nope"])
    no_ids = GeneGraph.from_omnipath(df)
    assert "P60484" in no_ids
    assert any("UniProt" in n for n in no_ids.report.notes)


def test_trrust(trrust):
    g = trrust
    assert g.relations == ["trrust"]
    assert g.report.n_edges_read == 9_398
    assert g.n_edges == 9_398 - 954  # pairs listed with two modes are merged
    assert g.edges["directed"].all()
    assert edge(g, "ABL1", "CSF1")["sign"].iloc[0] == 1  # Activation + Unknown
    assert edge(g, "ABL1", "JUN")["sign"].iloc[0] == 0  # Activation + Repression
    assert edge(g, "AATF", "BAX")["sign"].iloc[0] == -1
    # AHR -> CYP1A1: 2 PMIDs (Activation), 1 (Repression), 8 (Unknown)
    ahr = edge(g, "AHR", "CYP1A1")
    assert ahr["weight"].iloc[0] == pytest.approx(1 + np.log1p(11)) and ahr["sign"].iloc[0] == 0
    assert len(edge(g, "STAT1", "IRF1")) == 1


def test_trrust_raw_without_header(tmp_path):
    p = tmp_path / "trrust_rawdata.human.tsv"
    p.write_text(
        "STAT1\tIRF1\tActivation\t1;2\nSTAT1\tIRF1\tRepression\t3\nJAK2\tSTAT1\tUnknown\t4\n"
    )
    g = GeneGraph.read(p)
    assert g.relations == ["trrust"] and g.n_edges == 2
    assert edge(g, "STAT1", "IRF1")["sign"].iloc[0] == 0
    assert edge(g, "STAT1", "IRF1")["weight"].iloc[0] == pytest.approx(1 + np.log1p(3))


def test_march8_missing(go_graph, omnipath, id_table_path):
    # Papalexi's MARCH8 is MARCHF8 in the newer tables; the graphs only know MARCHF8
    for g in (go_graph, omnipath, go_graph | omnipath):
        assert g.missing(["STAT1", "MARCH8", "IFNGR1", "MARCH8"]) == ["MARCH8"]
        assert "MARCHF8" in g
        assert g.resolve(["MARCH8", "STAT1"], id_table=id_table_path) == {
            "MARCH8": "MARCHF8",
            "STAT1": "STAT1",
        }
    assert go_graph.resolve(["MARCH8", "NOT_A_GENE"]) == {"MARCH8": None, "NOT_A_GENE": None}
    # a graph that uses the old name is found from the new one
    old = GeneGraph.from_edges(pd.DataFrame({"source": ["MARCH8"], "target": ["STAT1"]}))
    assert old.resolve(["MARCHF8"], id_table=id_table_path) == {"MARCHF8": "MARCH8"}


def test_map_ids_report(id_table_path, caplog):
    ids = pd.read_csv(id_table_path, sep="\t", dtype=str)
    # an alias shared by two genes, one of which will be a node: 10q23del -> BMPR1A / PTEN
    assert set(ids.loc[ids["id"] == "10q23del", "symbol"]) == {"BMPR1A", "PTEN"}
    df = pd.DataFrame(
        {
            "source": ["P60484", "MARCH8", "7157", "10q23del", "12-LOX", "NOT_A_GENE", "STAT1"],
            "target": ["STAT1", "STAT1", "STAT1", "STAT1", "STAT1", "STAT1", "ENSG00000165406"],
        }
    )
    g = GeneGraph.from_edges(df, relation="test")
    with caplog.at_level(logging.INFO, logger="pertx_scvi.graphs"):
        m = g.map_ids(id_table_path)
    assert "map_ids" in caplog.text
    rep = m.report
    assert isinstance(rep, GraphReport)
    assert rep.mapped_sample["P60484"] == "PTEN"
    assert rep.mapped_sample["MARCH8"] == "MARCHF8"
    assert rep.mapped_sample["ENSG00000165406"] == "MARCHF8"
    assert rep.mapped_sample["7157"] == "TP53"
    assert rep.n_ids_mapped == 4
    # ambiguous: neither BMPR1A nor PTEN is a node before mapping (PTEN is there as P60484)
    assert "10q23del" in rep.ambiguous_sample and "12-LOX" in rep.ambiguous_sample
    assert rep.n_ids_unmapped == 1 and rep.unmapped_sample == ["NOT_A_GENE"]
    # STAT1 -> ENSG00000165406 becomes STAT1 -> MARCHF8; MARCH8 -> STAT1 becomes MARCHF8 -> STAT1
    assert len(edge(m, "MARCHF8", "STAT1")) == 1 and len(edge(m, "STAT1", "MARCHF8")) == 1
    assert "NOT_A_GENE" in m and "10q23del" in m
    dropped = g.map_ids(id_table_path, drop_unmapped=True)
    assert "NOT_A_GENE" not in dropped and "10q23del" not in dropped
    assert dropped.report.dropped["unmapped_edges"] == 3
    # a candidate that is a node resolves an ambiguous alias
    g2 = GeneGraph.from_edges(pd.DataFrame({"source": ["10q23del"], "target": ["PTEN"]}))
    assert g2.map_ids(id_table_path).report.mapped_sample == {"10q23del": "PTEN"}
    # versioned Ensembl ids and UniProt isoforms
    g3 = GeneGraph.from_edges(
        pd.DataFrame({"source": ["ENSG00000141510.17"], "target": ["P60484-2"]})
    )
    assert set(g3.map_ids(id_table_path).genes) == {"TP53", "PTEN"}
    # a DataFrame id table works too
    table = pd.DataFrame({"id": ["foo"], "id_type": ["alias"], "symbol": ["STAT1"]})
    assert GeneGraph.from_edges(pd.DataFrame({"source": ["foo"], "target": ["x"]})).map_ids(
        table
    ).genes.tolist() == ["STAT1", "x"]


# --------------------------------------------------------------------------- STRING
DETAILED_HEADER = (
    "protein1 protein2 neighborhood fusion cooccurence coexpression experimental database"
    " textmining combined_score\n"
)
DETAILED = (
    DETAILED_HEADER
    + """9606.ENSP00000361021 9606.ENSP00000354394 0 0 0 62 900 900 950 999
9606.ENSP00000354394 9606.ENSP00000361021 0 0 0 62 900 900 950 999
9606.ENSP00000361021 9606.ENSP00000367207 0 0 0 450 300 0 500 700
9606.ENSP00000367207 9606.ENSP00000361021 0 0 0 450 300 0 500 700
9606.ENSP00000354394 9606.ENSP00000000001 0 0 0 0 0 0 380 390
9606.ENSP00000000001 9606.ENSP00000354394 0 0 0 0 0 0 380 390
"""
)
INFO = """#string_protein_id\tpreferred_name\tprotein_size\tannotation
9606.ENSP00000361021\tSTAT1\t750\tSignal transducer and activator of transcription 1
9606.ENSP00000354394\tJAK2\t1132\tTyrosine-protein kinase JAK2
9606.ENSP00000367207\tIRF1\t325\tInterferon regulatory factor 1
"""
FULL_HEADER = (
    "protein1 protein2 neighborhood neighborhood_transferred fusion cooccurence homology"
    " coexpression coexpression_transferred experiments experiments_transferred database"
    " database_transferred textmining textmining_transferred combined_score\n"
)
FULL = FULL_HEADER + (
    "9606.ENSP00000361021 9606.ENSP00000354394 0 0 0 0 0 62 0 900 0 900 0 950 0 999\n"
    "9606.ENSP00000354394 9606.ENSP00000361021 0 0 0 0 0 62 0 900 0 900 0 950 0 999\n"
)


def test_from_string(tmp_path):
    links = tmp_path / "9606.protein.links.detailed.v12.0.txt.gz"
    with gzip.open(links, "wt") as fh:
        fh.write(DETAILED)
    info = tmp_path / "9606.protein.info.v12.0.txt"
    info.write_text(INFO)
    g = GeneGraph.from_string(links, info=info)
    assert g.relations == [
        "string_coexpression",
        "string_database",
        "string_experiments",
        "string_textmining",
    ]
    e = g.edges
    assert not e["directed"].any()
    exp = e[e["relation"] == "string_experiments"]
    assert list(zip(exp["source"], exp["target"], strict=True)) == [("JAK2", "STAT1")]
    assert exp["weight"].iloc[0] == pytest.approx(0.9)
    coexp = e[e["relation"] == "string_coexpression"]
    assert list(zip(coexp["source"], coexp["target"], strict=True)) == [("IRF1", "STAT1")]
    tm = e[e["relation"] == "string_textmining"]
    assert len(tm) == 2  # 0.38 is below the threshold
    assert g.report.n_ids_unmapped == 1 and g.report.n_edges_read == 6  # ENSP...0001
    g2 = GeneGraph.from_string(links, info=info, threshold=0.3, channels=["textmining"])
    assert g2.relations == ["string_textmining"] and g2.n_edges == 3
    assert "ENSP00000000001" in g2.report.unmapped_sample[0]
    combined = GeneGraph.from_string(links, info=info, channels="combined_score")
    assert combined.relations == ["string_combined"] and combined.n_edges == 2
    no_info = GeneGraph.from_string(links)
    assert "ENSP00000361021" in no_info
    with pytest.raises(ValueError, match="unknown STRING channels"):
        GeneGraph.from_string(links, channels=["nope"])
    full = tmp_path / "9606.protein.links.full.v12.0.txt"
    full.write_text(FULL)
    gf = GeneGraph.read(full, info=info)  # homology and *_transferred are not channels
    assert gf.relations == ["string_database", "string_experiments", "string_textmining"]
    assert len(edge(gf, "JAK2", "STAT1", "string_experiments")) == 1
    # read() tells STRING from the header
    assert GeneGraph.read(links, info=info).n_edges == g.n_edges


# --------------------------------------------------------------------------- generic / read
def test_from_edges_and_write_read(tmp_path, caplog):
    df = pd.DataFrame(
        {
            "a": ["A", "B", "C", "D", "A"],
            "b": ["B", "C", "D", "E", "B"],
            "w": [1.0, 0.0, np.nan, 2.0, 3.0],
            "mode": ["activation", "-", "+", "x", "activation"],
            "rel": ["p", "p", "q", "q", "p"],
        }
    )
    with caplog.at_level(logging.INFO, logger="pertx_scvi.graphs"):
        g = GeneGraph.from_edges(
            df, source="a", target="b", weight="w", relation="rel", sign="mode"
        )
    assert "from_edges" in caplog.text
    assert g.report.dropped["nonpositive_or_missing_weight"] == 2
    assert g.n_edges == 2  # A->B twice merged (largest weight), D->E
    assert edge(g, "A", "B")["weight"].iloc[0] == 3.0
    assert edge(g, "A", "B")["sign"].iloc[0] == 1
    assert edge(g, "D", "E")["sign"].iloc[0] == 0
    assert g.relations == ["p", "q"]
    path = tmp_path / "edges.csv.gz"
    g.write(path)
    back = GeneGraph.read(path)
    pd.testing.assert_frame_equal(
        back.edges.sort_values(["source", "target"]).reset_index(drop=True),
        g.edges.sort_values(["source", "target"]).reset_index(drop=True),
    )
    assert GeneGraph.read(g) is g
    assert GeneGraph.read(df.rename(columns={"a": "source", "b": "target"})).n_edges == 4


def test_read_dispatch_and_errors(graph_dir, tmp_path):
    trr = GeneGraph.read(graph_dir / "trrust_v2_human.tsv")
    assert trr.relations == ["trrust"]
    both = GeneGraph.read(
        [graph_dir / "trrust_v2_human.tsv", small_graph()],
        id_table=graph_dir / "human_gene_ids.tsv.gz",
    )
    assert both.relations == ["r1", "r2", "trrust"]
    bad = tmp_path / "graph.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="cannot tell the graph format"):
        GeneGraph.read(bad)
    binary = tmp_path / "graph.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a readable text table"):
        GeneGraph.read(binary)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError):
        GeneGraph.read(empty)
    with pytest.raises(FileNotFoundError):
        GeneGraph.read(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="STRING"):
        GeneGraph.from_string(bad)


def test_read_gene2go_format(graph_dir):
    # the annotation file is recognised (only the header is sniffed here)
    from pertx_scvi.graphs._loaders import detect_format

    assert detect_format(graph_dir / "human_gene2go.tsv.gz") == "go_annotations"
    assert detect_format(graph_dir / "go_top20_jaccard.csv.gz") == "gears_go"
    assert detect_format(graph_dir / "omnipath_interactions.csv.gz") == "omnipath"
    assert detect_format(graph_dir / "trrust_v2_human.tsv") == "trrust"


# --------------------------------------------------------------------------- GO annotations
def _brute_topk(ann: pd.DataFrame, k: int, min_j: float) -> set[tuple[str, str]]:
    sets = ann.groupby("gene")["term"].apply(set).to_dict()
    genes = sorted(sets)
    out = set()
    for g in genes:
        scores = []
        for h in genes:
            if h == g:
                continue
            inter = len(sets[g] & sets[h])
            j = inter / len(sets[g] | sets[h])
            if inter and j >= min_j:
                scores.append((-j, h))
        out.update((g, h) for _, h in sorted(scores)[:k])
    return out


@pytest.mark.parametrize("dense_min_genes", [10_000, 30])
def test_topk_jaccard_matches_brute_force(dense_min_genes):
    rng = np.random.default_rng(1)
    genes = [f"G{i:03d}" for i in range(120)]
    rows = []
    for i, g in enumerate(genes):
        n = rng.integers(1, 8)
        terms = set(rng.choice(60, size=n, replace=False).tolist())
        if i % 3 == 0:
            terms.add(100)  # a broad term (40 genes)
        rows += [(g, f"T{t}") for t in terms]
    ann = pd.DataFrame(rows, columns=["gene", "term"])
    x, names, _ = gene_term_matrix(ann)
    r, c, j = topk_jaccard(x, 5, 0.1, n_jobs=2, dense_min_genes=dense_min_genes, chunk=16)
    got = set(zip(names[r], names[c], strict=True))
    assert got == _brute_topk(ann, 5, 0.1)
    assert (j >= 0.1).all() and (r != c).all()


def test_from_go_annotations(graph_dir, go_graph):
    ann = pd.read_csv(graph_dir / "human_gene2go.tsv.gz", sep="\t", dtype=str)
    # a subset of genes keeps the test fast; the full file gives go_top20_jaccard exactly
    # (409,189 edges, 20,676 genes, identical up to ties; see the docstring)
    keep = ann["symbol"].isin(ann["symbol"].drop_duplicates().sample(3000, random_state=0))
    keep |= ann["symbol"].isin(IFN)
    g = GeneGraph.from_go_annotations(ann[keep], top_k=10, ontologies=("BP",))
    assert g.relations == ["go"]
    deg = g.degree(direction="out")
    assert deg.max() == 10
    assert g.edges["weight"].min() >= 0.1
    assert "IFNGR2" in g.neighbors("IFNGR1", direction="out")
    pruned = GeneGraph.from_go_annotations(ann[keep], max_genes_per_term=200)
    assert pruned.report.dropped["broad_terms"] > 0
    with pytest.raises(ValueError, match="GO term column"):
        GeneGraph.from_go_annotations(pd.DataFrame({"symbol": ["A"], "x": ["B"]}))


# --------------------------------------------------------------------------- operations
def test_union(go_graph, omnipath, trrust):
    g = go_graph | omnipath | trrust
    assert g.n_edges == go_graph.n_edges + omnipath.n_edges + trrust.n_edges
    assert g.relations == sorted(go_graph.relations + omnipath.relations + trrust.relations)
    assert len(g.reports) == 5  # three loaders, two unions
    assert set(g.genes) == set(go_graph.genes) | set(omnipath.genes) | set(trrust.genes)
    text = repr(g)
    assert "omnipath_transcriptional" in text and "trrust" in text
    # duplicates within one relation are merged
    a = small_graph()
    assert (a | a).n_edges == a.n_edges
    b = GeneGraph.from_edges(
        pd.DataFrame(
            {
                "source": ["A", "A"],
                "target": ["B", "C"],
                "weight": [5.0, 1.0],
                "sign": [-1, 0],
                "relation": ["r1", "r3"],
            }
        ),
        weight="weight",
        sign="sign",
        relation="relation",
    )
    u = a | b
    ab = edge(u, "A", "B", "r1")
    assert len(ab) == 1 and ab["weight"].iloc[0] == 5.0 and ab["sign"].iloc[0] == 0
    assert u.relations == ["r1", "r2", "r3"]
    assert u.n_edges == a.n_edges + 1


def test_restrict_hops(go_graph):
    g = small_graph()  # r1: A-B-C-D chain, r2: A-C, X-Y
    assert g.restrict(["A"]).n_edges == 0
    assert g.restrict(["A", "B", "Q"]).n_edges == 1
    assert g.restrict(["A", "B", "Q"]).report.unmapped_sample == ["Q"]
    h1 = g.restrict(["A"], hops=1)
    assert set(h1.genes) == {"A", "B", "C"} and h1.n_edges == 3
    h2 = g.restrict(["D"], hops=2)
    assert set(h2.genes) == {"A", "B", "C", "D"}
    assert g.restrict(["D"], hops=10).n_edges == 4
    ifn = go_graph.restrict(IFN)
    assert set(ifn.genes) <= set(IFN) and len(edge(ifn, "IFNGR1", "IFNGR2")) == 1
    hop = go_graph.restrict(["STAT1"], hops=1)
    assert set(go_graph.neighbors("STAT1")) | {"STAT1"} == set(hop.genes)
    with pytest.raises(ValueError):
        g.restrict(["A"], hops=-1)


def test_select_degree_neighbors():
    g = small_graph()
    assert g.select_relations("r2").n_edges == 2
    assert g.select_relations(["r*"]).n_edges == g.n_edges
    with pytest.raises(ValueError, match="no relation"):
        g.select_relations("zz")
    assert g.neighbors("C") == ["A", "B", "D"]
    assert g.neighbors("C", relation="r1", direction="out") == ["D"]
    assert g.neighbors("C", direction="in") == ["A", "B"]
    deg = g.degree()
    assert deg["C"] == 3 and deg["A"] == 2 and deg.sum() == 2 * g.n_edges
    assert g.degree(relation="r2")["B"] == 0
    assert g.missing(["A", "nope"]) == ["nope"]
    assert "A" in g and len(g) == 5
    back = pickle.loads(pickle.dumps(g))
    assert back.edges.equals(g.edges) and back.reports == g.reports


def test_to_pyg_alignment():
    g = small_graph()
    order = ["C", "A", "Z", "B"]  # Z has no edge; D, X, Y are outside
    data = g.to_pyg(genes=order)
    assert data.num_nodes == 4 and data.node_names == order
    assert data.relation_names == ["r1", "r2"]
    edges = {
        (order[s], order[t], data.relation_names[r], float(w), int(sg))
        for (s, t), r, w, sg in zip(
            data.edge_index.T.tolist(),
            data.edge_type.tolist(),
            data.edge_weight.tolist(),
            data.edge_sign.tolist(),
            strict=True,
        )
    }
    assert edges == {
        ("A", "B", "r1", 1.0, 1),
        ("B", "A", "r1", 1.0, 1),
        ("B", "C", "r1", 2.0, -1),
        ("C", "B", "r1", 2.0, -1),
        ("A", "C", "r2", 0.5, 1),
        ("C", "A", "r2", 0.5, 1),
    }
    assert data.node_in_graph.tolist() == [True, True, False, True]
    assert data.edge_index.dtype.is_floating_point is False
    assert (
        str(data.edge_index.dtype) == "torch.int64" and str(data.edge_type.dtype) == "torch.int64"
    )
    directed = g.to_pyg(genes=order, undirected=False)
    assert directed.edge_index.shape[1] == 3
    # symmetric relations are reversed whatever `undirected` says
    sym = GeneGraph.from_edges(pd.DataFrame({"source": ["A"], "target": ["B"]}), directed=False)
    assert sym.to_pyg(undirected=False).edge_index.shape[1] == 2
    # relation subset / order
    only = g.to_pyg(relations=["r2", "r1"])
    assert only.relation_names == ["r2", "r1"]
    assert only.node_names == g.genes.tolist()
    with pytest.raises(ValueError, match="unique"):
        g.to_pyg(genes=["A", "A"])
    with pytest.raises(ValueError, match="unknown relations"):
        g.to_pyg(relations=["zz"])


def test_to_pyg_real(go_graph, omnipath):
    g = go_graph | omnipath
    data = g.to_pyg()
    n_go = go_graph.to_pyg().edge_index.shape[1]
    assert n_go < 2 * go_graph.n_edges  # mutual top-20 pairs are not doubled
    assert data.num_nodes == g.n_genes
    assert data.edge_index.shape[0] == 2
    e = data.edge_index.shape[1]
    assert data.edge_type.shape == data.edge_weight.shape == data.edge_sign.shape == (e,)
    assert int(data.edge_index.max()) < data.num_nodes
    assert data.relation_names == g.relations
    # align to a gene vocabulary: STAT1 -> JAK2 reverse edge of JAK2 -> STAT1 exists
    vocab = ["STAT1", "JAK2", "NOT_IN_GRAPH", "IFNGR1"]
    d2 = g.to_pyg(genes=vocab)
    pairs = set(map(tuple, d2.edge_index.T.tolist()))
    assert (1, 0) in pairs and (0, 1) in pairs and (3, 1) in pairs
    assert d2.node_in_graph.tolist() == [True, True, False, True]


def _edge_list(data) -> list[tuple]:
    """(source, target, relation, weight, sign) of each edge of a to_pyg result, in order."""
    names, rels = data.node_names, data.relation_names
    return [
        (names[s], names[t], rels[r], round(w, 6), sg)
        for (s, t), r, w, sg in zip(
            data.edge_index.T.tolist(),
            data.edge_type.tolist(),
            data.edge_weight.tolist(),
            data.edge_sign.tolist(),
            strict=True,
        )
    ]


def test_to_pyg_reverse_relations_self_loops_and_cap():
    directed = pd.DataFrame(
        {
            "source": ["A", "B", "C", "D", "C", "B"],
            "target": ["C", "C", "C", "C", "A", "A"],
            "weight": [0.5, 2.0, 9.0, 1.0, 3.0, 1.0],
            "sign": [1, -1, 0, 1, 0, 1],
        }
    )
    g = GeneGraph.from_edges(directed, weight="weight", sign="sign", relation="reg") | (
        GeneGraph.from_edges(
            pd.DataFrame({"source": ["A"], "target": ["B"]}), relation="sym", directed=False
        )
    )
    order = ["A", "B", "C", "D", "E"]
    data = g.to_pyg(genes=order, undirected=False, reverse_relations=True)
    assert data.relation_names == ["reg", "sym", "reg~rev"]  # symmetric: no reverse relation
    forward = [
        ("A", "C", "reg", 0.5, 1),
        ("B", "A", "reg", 1.0, 1),
        ("B", "C", "reg", 2.0, -1),
        ("C", "A", "reg", 3.0, 0),
        ("C", "C", "reg", 9.0, 0),
        ("D", "C", "reg", 1.0, 1),
        ("A", "B", "sym", 1.0, 0),
        ("B", "A", "sym", 1.0, 0),
    ]
    reverse = [(t, s, "reg~rev", w, sg) for s, t, r, w, sg in forward if r == "reg"]
    assert _edge_list(data) == forward + reverse
    assert data.node_in_graph.tolist() == [True, True, True, True, False]

    no_loops = g.to_pyg(genes=order, undirected=False, reverse_relations=True, self_loops=False)
    assert _edge_list(no_loops) == [e for e in forward + reverse if e[0] != e[1]]
    # C has in-edges of "reg" from A, B, D (C -> C dropped first): the 2 heaviest stay
    capped = g.to_pyg(
        genes=order, undirected=False, reverse_relations=True, self_loops=False, max_neighbours=2
    )
    kept = [e for e in forward + reverse if e[0] != e[1] and e[:3] != ("A", "C", "reg")]
    assert _edge_list(capped) == kept
    # self-loops count when kept; equal weights: the first edge stays
    one = g.to_pyg(genes=["A", "B", "C"], undirected=False, max_neighbours=1)
    assert _edge_list(one) == [
        ("C", "A", "reg", 3.0, 0),
        ("C", "C", "reg", 9.0, 0),
        ("A", "B", "sym", 1.0, 0),
        ("B", "A", "sym", 1.0, 0),
    ]
    tie = GeneGraph.from_edges(pd.DataFrame({"source": ["Y", "X"], "target": ["Z", "Z"]}))
    assert _edge_list(tie.to_pyg(undirected=False, max_neighbours=1)) == [
        ("X", "Z", "custom", 1.0, 0)
    ]
    with pytest.raises(ValueError, match="undirected=False"):
        g.to_pyg(reverse_relations=True)


def _encoder_edges_stepwise(g: GeneGraph, genes: list[str], max_neighbours: int) -> list:
    """Reference for to_pyg's encoder options: reverse relations, self-loop removal and the
    in-degree cap applied one after the other to the plain directed tensors."""
    from pertx_scvi.graphs._gene_graph import cap_in_degree

    data = g.to_pyg(genes=genes, undirected=False)
    ei, et, ew = data.edge_index.numpy(), data.edge_type.numpy(), data.edge_weight.numpy()
    names = list(data.relation_names)
    directed = g.edges.groupby("relation", observed=True)["directed"].any()
    parts = [(ei, et, ew)]
    for code, rel in enumerate(list(names)):
        if directed.get(rel, False):
            m = et == code
            parts.append((ei[::-1, m], np.full(int(m.sum()), len(names)), ew[m]))
            names.append(rel + "~rev")
    ei, et, ew = (np.concatenate(p, axis=-1) for p in zip(*parts, strict=True))
    loops = ei[0] == ei[1]
    ei, et, ew = ei[:, ~loops], et[~loops], ew[~loops]
    keep = cap_in_degree(ei, et, ew, max_neighbours)
    return [ei[:, keep].tolist(), et[keep].tolist(), ew[keep].tolist(), names]


def test_to_pyg_encoder_options_real(go_graph, omnipath, trrust):
    rng = np.random.default_rng(0)
    for g in (go_graph, omnipath, go_graph | omnipath | trrust):
        genes = sorted(rng.choice(g.genes, size=int(0.8 * g.n_genes), replace=False))
        genes.append("NOT_IN_GRAPH")
        for cap in (32, 3):
            data = g.to_pyg(
                genes=genes,
                undirected=False,
                reverse_relations=True,
                self_loops=False,
                max_neighbours=cap,
            )
            got = [
                data.edge_index.tolist(),
                data.edge_type.tolist(),
                data.edge_weight.tolist(),
                data.relation_names,
            ]
            assert got == _encoder_edges_stepwise(g, genes, cap)
    assert "omnipath_transcriptional~rev" in data.relation_names


def test_shuffled(go_graph, omnipath):
    g = small_graph() | GeneGraph.from_edges(
        pd.DataFrame({"source": list("ABCDEFGH"), "target": list("BCDEFGHA")}), relation="ring"
    )
    s = g.shuffled(seed=3)
    for rel in g.relations:
        for direction in ("in", "out"):
            pd.testing.assert_series_equal(
                g.degree(rel, direction), s.degree(rel, direction).reindex(g.genes)
            )
    sub = go_graph.restrict(go_graph.genes[:3000])
    sh = sub.shuffled(seed=0)
    assert sh.n_edges == sub.n_edges
    pd.testing.assert_series_equal(sub.degree(direction="out"), sh.degree(direction="out"))
    pd.testing.assert_series_equal(sub.degree(direction="in"), sh.degree(direction="in"))
    old = set(zip(sub.edges["source"], sub.edges["target"], strict=True))
    new = set(zip(sh.edges["source"], sh.edges["target"], strict=True))
    assert len(old & new) / len(old) < 0.1
    assert not (sh.edges["source"] == sh.edges["target"]).any()
    assert not sh.edges.duplicated(["relation", "source", "target"]).any()
    np.testing.assert_allclose(np.sort(sh.edges["weight"]), np.sort(sub.edges["weight"]))
    assert sub.shuffled(seed=0).edges.equals(sh.edges)
    assert not sub.shuffled(seed=1).edges.equals(sh.edges)
    # hubs (STAT1: ~1,000 edges) make the first permutation repeat edges; repairs keep it exact
    om = omnipath.shuffled(seed=0)
    assert om.n_edges == omnipath.n_edges and not om.report.notes
    for rel in omnipath.relations:
        for direction in ("in", "out"):
            assert (omnipath.degree(rel, direction) == om.degree(rel, direction)).all()
    assert not om.edges.duplicated(["relation", "source", "target"]).any()


# --------------------------------------------------------------------------- embeddings
def test_go_embedding(go_emb, graph_dir):
    e = go_emb
    assert e.shape[1] == 32 and e.shape[0] > 20_000
    assert e.index.is_unique and e.index.name == "gene"
    np.testing.assert_allclose(np.linalg.norm(e.to_numpy(), axis=1), 1.0, atol=1e-4)
    cos = lambda a, b: float(e.loc[a] @ e.loc[b])  # noqa: E731
    assert cos("IFNGR1", "IFNGR2") > 0.5
    # genes sharing GO terms are closer than random pairs
    ann = pd.read_csv(graph_dir / "go_top20_jaccard.csv.gz").sample(2000, random_state=0)
    ann = ann[ann["importance"] >= 0.5]
    similar = np.einsum(
        "ij,ij->i", e.loc[ann["source"]].to_numpy(), e.loc[ann["target"]].to_numpy()
    )
    rng = np.random.default_rng(0)
    a, b = rng.choice(e.index, 2000), rng.choice(e.index, 2000)
    rand = np.einsum("ij,ij->i", e.loc[a].to_numpy(), e.loc[b].to_numpy())
    assert np.median(similar) > np.median(rand) + 0.3


def test_go_embedding_small_and_gene_order():
    ann = pd.DataFrame(
        {
            "symbol": ["A", "A", "B", "B", "C", "D"],
            "go_id": ["GO:1", "GO:2", "GO:1", "GO:2", "GO:3", "GO:3"],
        }
    )
    e = go_embedding(ann, n_components=8, genes=["D", "A", "MISSING", "B"])
    assert e.shape == (4, 8) and e.index.tolist() == ["D", "A", "MISSING", "B"]
    assert (e.loc["MISSING"] == 0).all()
    assert float(e.loc["A"] @ e.loc["B"]) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(e.loc["A"] @ e.loc["D"])) < 1e-5
    again = go_embedding(ann, n_components=8, genes=["D", "A", "MISSING", "B"])
    pd.testing.assert_frame_equal(e, again)


def test_read_gene_embedding_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    genes = ["STAT1", "JAK2", "IFNGR1"]
    vec = rng.standard_normal((3, 4)).astype(np.float32)
    df = pd.DataFrame(vec, index=pd.Index(genes, name="gene"), columns=[f"d{i}" for i in range(4)])

    def check(out: pd.DataFrame) -> None:
        assert out.index.tolist() == genes
        np.testing.assert_allclose(out.to_numpy(), vec, rtol=1e-6)
        assert out.dtypes.eq(np.float32).all()

    df.to_csv(tmp_path / "e.csv")
    check(read_gene_embedding(tmp_path / "e.csv"))
    df.to_csv(tmp_path / "e.tsv.gz", sep="\t")
    check(read_gene_embedding(tmp_path / "e.tsv.gz"))
    np.savez(tmp_path / "e.npz", genes=np.array(genes), vectors=vec)
    check(read_gene_embedding(tmp_path / "e.npz"))
    with open(tmp_path / "d.pkl", "wb") as fh:
        pickle.dump(dict(zip(genes, vec, strict=True)), fh)
    check(read_gene_embedding(tmp_path / "d.pkl"))
    df.to_pickle(tmp_path / "f.pickle")
    check(read_gene_embedding(tmp_path / "f.pickle"))
    with open(tmp_path / "w2v.txt", "w") as fh:
        fh.write("3 4\n")
        for g, v in zip(genes, vec, strict=True):
            fh.write(g + " " + " ".join(f"{x:.9g}" for x in v) + "\n")
    check(read_gene_embedding(tmp_path / "w2v.txt"))


def test_read_gene_embedding_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame(
        np.eye(2, dtype=np.float32), index=pd.Index(["A", "B"], name="gene"), columns=["x", "y"]
    )
    df.to_parquet(tmp_path / "e.parquet")
    pd.testing.assert_frame_equal(read_gene_embedding(tmp_path / "e.parquet"), df)


def test_read_gene_embedding_errors(tmp_path):
    (tmp_path / "e.xyz").write_text("A,1\n")
    with pytest.raises(ValueError, match="unknown gene embedding format"):
        read_gene_embedding(tmp_path / "e.xyz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError):
        read_gene_embedding(tmp_path / "bad.npz")
    np.savez(tmp_path / "keys.npz", names=np.array(["A"]), emb=np.ones((1, 2)))
    with pytest.raises(ValueError, match="'genes' and 'vectors'"):
        read_gene_embedding(tmp_path / "keys.npz")
    (tmp_path / "dup.csv").write_text("gene,a,b\nA,1,2\nA,3,4\n")
    with pytest.raises(ValueError, match="repeated genes"):
        read_gene_embedding(tmp_path / "dup.csv")
    (tmp_path / "text.csv").write_text("gene,a\nA,x\n")
    with pytest.raises(ValueError, match="numeric"):
        read_gene_embedding(tmp_path / "text.csv")
    with open(tmp_path / "l.pkl", "wb") as fh:
        pickle.dump([1, 2], fh)
    with pytest.raises(ValueError, match="dict or a DataFrame"):
        read_gene_embedding(tmp_path / "l.pkl")
    with open(tmp_path / "ragged.pkl", "wb") as fh:
        pickle.dump({"A": [1, 2], "B": [1]}, fh)
    with pytest.raises(ValueError, match="different lengths"):
        read_gene_embedding(tmp_path / "ragged.pkl")


def test_pairs_helper_sanity():
    # the brute-force reference itself on a trivial case
    ann = pd.DataFrame({"gene": ["A", "B", "C"], "term": ["t", "t", "u"]})
    assert _brute_topk(ann, 5, 0.1) == {("A", "B"), ("B", "A")}


def test_target_coverage_counts_trained_neighbours_per_source_and_fold():
    go = GeneGraph(pd.DataFrame({"source": ["A", "A", "B"], "target": ["B", "C", "D"]}))
    ppi = GeneGraph(
        pd.DataFrame({"source": ["MARCHF8", "E"], "target": ["A", "F"], "relation": "ppi"})
    )
    ids = pd.DataFrame({"id": ["MARCH8"], "symbol": ["MARCHF8"]})
    coverage = target_coverage(
        {"go": go, "ppi": ppi},
        ["A", "MARCH8", "E"],
        trained={"A": ["B", "C", "MARCH8"], "MARCH8": ["A", "B"], "E": ["A"]},
        id_table=ids,
    ).set_index(["target", "source"])
    # A: both directions count, only trained genes count, renamed genes are reported by the
    # name the caller used
    assert coverage.loc[("A", "go"), "trained_neighbours"] == "B,C"
    assert coverage.loc[("A", "ppi"), "trained_neighbours"] == "MARCH8"
    assert coverage.loc[("MARCH8", "ppi"), "node"] == "MARCHF8"
    assert coverage.loc[("MARCH8", "ppi"), "n_trained_neighbours"] == 1
    assert coverage.loc[("MARCH8", "go"), "node"] is None
    assert coverage.loc[("MARCH8", "go"), "degree"] == 0
    # E has a neighbour (F), but no trained one
    assert coverage.loc[("E", "ppi"), "degree"] == 1
    assert coverage.loc[("E", "ppi"), "n_trained_neighbours"] == 0
    with pytest.raises(KeyError, match="'E'"):
        target_coverage({"go": go}, ["A", "E"], trained={"A": ["B"]})
