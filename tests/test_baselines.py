"""Tests of the baselines in pertx_scvi.metrics on screens where the right answer is known."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pertx_scvi.metrics as pm

KEY, CTRL = "perturbation", "control"
N_GENES = 8
GENES = [f"g{i}" for i in range(N_GENES)]
ATOL = 1e-5  # float32 normalisation


def exact_screen(profiles: dict[str, np.ndarray], n_cells: int = 4) -> ad.AnnData:
    """Cells whose log1p(normalize_total 1e4) profile is exactly ``profiles[label]``.

    Every cell of a label is identical; a last "FILLER" gene brings the total to exactly 1e4,
    so normalisation is the identity and log1p gives back the planted values on ``GENES``.
    """
    rows, labels = [], []
    for label, v in profiles.items():
        c = np.expm1(np.asarray(v, dtype=np.float64))
        assert c.sum() < 1e4
        rows += [np.append(c, 1e4 - c.sum())] * n_cells
        labels += [label] * n_cells
    obs = pd.DataFrame({KEY: labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[*GENES, "FILLER"])
    return ad.AnnData(X=sparse.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs, var=var)


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    ctrl = rng.uniform(1.0, 2.0, N_GENES)
    delta = {p: rng.uniform(-0.5, 0.5, N_GENES) for p in ["A", "B", "C"]}
    return ctrl, delta


@pytest.fixture
def screen(planted):
    ctrl, delta = planted
    return exact_screen({CTRL: ctrl, **{p: ctrl + d for p, d in delta.items()}})


def noisy_screen(seed: int = 0, n_per: int = 120) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(1.5, 0.7, 30)
    effects = {CTRL: {}, "A": {i: 1.2 for i in range(8)}, "B": {10: 1.0}, "N": {}}
    rows, labels = [], []
    for lab, eff in effects.items():
        lfc = np.zeros(30)
        for g, v in eff.items():
            lfc[g] = v
        n = 2 * n_per if lab == CTRL else n_per
        rows.append(rng.poisson(base * np.exp(lfc), size=(n, 30)))
        labels += [lab] * n
    obs = pd.DataFrame({KEY: labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{i}" for i in range(30)])
    return ad.AnnData(X=np.vstack(rows).astype(np.float32), obs=obs, var=var)


def values(df: pd.DataFrame, label: str) -> np.ndarray:
    return df.loc[label, GENES].to_numpy()


# ---------------------------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------------------------


def test_control_and_train_mean(screen, planted):
    ctrl, delta = planted
    cm = pm.ControlMean().fit(screen, KEY, CTRL)
    pred = cm.predict(["A", "Z+Y", CTRL])
    assert list(pred.index) == ["A", "Z+Y", CTRL]
    assert list(pred.columns) == [*GENES, "FILLER"]
    for lab in pred.index:
        np.testing.assert_allclose(values(pred, lab), ctrl, atol=ATOL)
    tm = pm.TrainMean().fit(screen, KEY, CTRL)
    expected = ctrl + np.mean([delta[p] for p in "ABC"], axis=0)
    np.testing.assert_allclose(values(tm.predict(["Z"]), "Z"), expected, atol=ATOL)
    np.testing.assert_allclose(values(tm.predict(["ctrl"]), "ctrl"), ctrl, atol=ATOL)
    # train-mean prediction = perturbed_mean_profile of the training data
    prof = pm.perturbed_mean_profile(screen, KEY, CTRL)
    np.testing.assert_allclose(tm.predict(["Z"]).iloc[0].to_numpy(), prof.to_numpy(), atol=1e-9)


def test_additive_recovers_additive_combination(planted):
    ctrl, delta = planted
    train = exact_screen({CTRL: ctrl, **{p: ctrl + d for p, d in delta.items()}})
    truth = ctrl + delta["A"] + delta["B"]
    add = pm.Additive().fit(train, KEY, CTRL)
    pred = add.predict(["A+B", "B+A", "A+ctrl", "ctrl+A", "A+Z", "Z"])
    np.testing.assert_allclose(values(pred, "A+B"), truth, atol=ATOL)
    np.testing.assert_allclose(values(pred, "B+A"), truth, atol=ATOL)
    np.testing.assert_allclose(values(pred, "A+ctrl"), ctrl + delta["A"], atol=ATOL)
    np.testing.assert_allclose(values(pred, "ctrl+A"), ctrl + delta["A"], atol=ATOL)
    # a member never seen alone falls back to the train-mean Δ
    mean_delta = np.mean([delta[p] for p in "ABC"], axis=0)
    np.testing.assert_allclose(values(pred, "A+Z"), ctrl + delta["A"] + mean_delta, atol=ATOL)
    np.testing.assert_allclose(values(pred, "Z"), ctrl + mean_delta, atol=ATOL)
    # the recovered combination scores perfectly against an observed additive combination
    held = exact_screen({CTRL: ctrl, "A+B": truth, "C+ctrl": ctrl + delta["C"]})
    df = pm.compare({"additive": add}, held, KEY, CTRL, n_top_de=4)
    v = df.set_index(["perturbation", "metric"])["value"]
    assert v[("A+B", "pearson_delta")] == pytest.approx(1.0, abs=1e-4)
    assert v[("A+B", "discrimination")] == 1.0


def test_combination_training_labels_are_merged(planted):
    ctrl, delta = planted
    ab = ctrl + delta["A"] + delta["B"]
    train = exact_screen({CTRL: ctrl, "A+ctrl": ctrl + delta["A"], "A+B": ab, "B+A": ab})
    prof = pm.training_profiles(train, KEY, CTRL)
    assert list(prof.means.index) == ["A", "A+B"]
    assert prof.n_cells["A+B"] == 8


def test_linear_recovers_training_perturbations(screen, planted):
    ctrl, delta = planted
    emb = pd.DataFrame(
        np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]), index=["A", "B", "C", "D"]
    )
    lin = pm.Linear(gene_embedding=emb, ridge=1e-9).fit(screen, KEY, CTRL)
    assert lin.G_.shape[1] == 2  # rank of the centred 3-perturbation matrix
    pred = lin.predict(["A", "B", "D", "Z", "A+B"])
    for p in "AB":
        np.testing.assert_allclose(values(pred, p), ctrl + delta[p], atol=1e-4)
    # D shares A's embedding; Z has none -> train mean (b)
    np.testing.assert_allclose(values(pred, "D"), values(pred, "A"), atol=1e-9)
    mean_delta = np.mean([delta[p] for p in "ABC"], axis=0)
    np.testing.assert_allclose(values(pred, "Z"), ctrl + mean_delta, atol=ATOL)
    # combinations sum embeddings: Y_A + Y_B - b
    expected = ctrl + delta["A"] + delta["B"] - mean_delta
    np.testing.assert_allclose(values(pred, "A+B"), expected, atol=1e-4)
    # a large ridge shrinks every prediction towards the train mean
    big = pm.Linear(gene_embedding=emb, ridge=1e6).fit(screen, KEY, CTRL).predict(["A"])
    np.testing.assert_allclose(values(big, "A"), ctrl + mean_delta, atol=1e-4)


def test_linear_default_uses_pca_gene_loadings(planted):
    ctrl, _ = planted
    rng = np.random.default_rng(3)
    profiles = {CTRL: ctrl, **{g: ctrl + rng.uniform(-0.5, 0.5, N_GENES) for g in GENES[:4]}}
    train = exact_screen(profiles)
    lin = pm.Linear(n_components=2).fit(train, KEY, CTRL)
    assert lin.embedding_source_ == "pca"
    assert lin.n_embedded_training_perturbations_ == 4
    tm = pm.TrainMean().fit(train, KEY, CTRL)
    pred = lin.predict(["NOT_MEASURED", "g6"])
    np.testing.assert_allclose(
        pred.loc["NOT_MEASURED"].to_numpy(), tm.predict(["x"]).iloc[0].to_numpy(), atol=1e-9
    )
    assert np.all(np.isfinite(pred.to_numpy()))
    with pytest.raises(ValueError, match="DataFrame"):
        pm.Linear(gene_embedding=np.eye(3))  # type: ignore[arg-type]


def test_go_gene_embedding_small_table():
    rows = [
        ("G1", "T1"),
        ("G1", "T2"),
        ("G2", "T1"),
        ("G2", "T2"),
        ("G3", "T3"),
        ("G4", "T3"),
        ("G4", "T4"),
        ("G5", "T5"),
        ("G6", "T1"),
        ("G6", "T5"),
    ]
    df = pd.DataFrame(rows, columns=["symbol", "go_id"]).assign(ontology="BP")
    df.loc[df.go_id == "T5", "ontology"] = "CC"
    emb = pm.go_gene_embedding(df, n_components=3)
    assert emb.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(emb.to_numpy(), axis=1), 1.0)
    np.testing.assert_allclose(emb.loc["G1"], emb.loc["G2"], atol=1e-12)  # same GO terms
    assert abs(emb.loc["G1"] @ emb.loc["G3"]) < 1e-8  # no shared term, orthogonal blocks
    again = pm.go_gene_embedding(df, n_components=3)
    pd.testing.assert_frame_equal(emb, again)
    sub = pm.go_gene_embedding(df, n_components=3, genes=["G2", "NOPE", "G1"])
    assert list(sub.index) == ["G2", "G1"]
    bp = pm.go_gene_embedding(df, n_components=2, ontologies=["BP"])
    assert "G5" not in bp.index
    with pytest.raises(ValueError, match="GO term column"):
        pm.go_gene_embedding(df.drop(columns="go_id"))


def test_graph_neighbour_average(screen, planted):
    ctrl, delta = planted
    edges = pd.DataFrame(
        [
            ("D", "A", 1.0),
            ("B", "D", 3.0),  # reversed: the graph is undirected
            ("A", "D", 0.5),  # duplicate pair: the larger weight (1.0) is kept
            ("D", "X", 5.0),  # X never perturbed: ignored
            ("D", "D", 9.0),  # self-loop: ignored
            ("E", "F", 1.0),  # no trained neighbour
        ],
        columns=["source", "target", "importance"],
    )
    gn = pm.GraphNeighbourAverage(edges).fit(screen, KEY, CTRL)
    assert gn.weight_col == "importance"
    pd.testing.assert_series_equal(
        gn.neighbours("D"), pd.Series([1.0, 3.0], index=["A", "B"], name="D")
    )
    pred = gn.predict(["D", "E", "D+E", "A+D"])
    d_hat = (delta["A"] + 3 * delta["B"]) / 4
    mean_delta = np.mean([delta[p] for p in "ABC"], axis=0)
    np.testing.assert_allclose(values(pred, "D"), ctrl + d_hat, atol=ATOL)
    np.testing.assert_allclose(values(pred, "E"), ctrl + mean_delta, atol=ATOL)
    np.testing.assert_allclose(values(pred, "D+E"), ctrl + d_hat + mean_delta, atol=ATOL)
    np.testing.assert_allclose(values(pred, "A+D"), ctrl + delta["A"] + d_hat, atol=ATOL)
    # unweighted graph
    plain = pm.GraphNeighbourAverage(edges[["source", "target"]]).fit(screen, KEY, CTRL)
    np.testing.assert_allclose(
        values(plain.predict(["D"]), "D"), ctrl + (delta["A"] + delta["B"]) / 2, atol=ATOL
    )
    with pytest.raises(ValueError, match="'target'"):
        pm.GraphNeighbourAverage(edges.drop(columns="target"))
    with pytest.raises(ValueError, match="finite and >= 0"):
        pm.GraphNeighbourAverage(edges.assign(importance=-1.0))


def test_split_half_ceiling():
    adata = noisy_screen()
    ceil = pm.SplitHalfCeiling(seed=1).fit(adata, KEY, CTRL)
    lab = adata.obs[KEY].to_numpy()
    ev = ceil.eval_mask_
    assert ev[lab == CTRL].all()
    for p in ["A", "B", "N"]:
        assert (~ev[lab == p]).sum() == 60 and ev[lab == p].sum() == 60
    X = pm.log_normalize(adata)
    pred = ceil.predict(["A", "B", "N"])
    half_a = X[(lab == "A") & ~ev].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(pred.loc["A"].to_numpy(), half_a, atol=1e-6)
    tm = pm.TrainMean().fit(adata[np.isin(lab, [CTRL, "B"])], KEY, CTRL)
    df = pm.compare(
        {"ceiling": pred, "train_mean": tm.predict(["A", "N"])},
        adata[ev],
        KEY,
        CTRL,
        perturbations=["A", "N"],
    )
    r = df[df.metric == "pearson_delta"].set_index(["method", "perturbation"])["value"]
    assert r[("ceiling", "A")] > 0.8
    assert r[("ceiling", "A")] > r[("train_mean", "A")]
    with pytest.raises(ValueError, match="'Q'"):
        ceil.predict(["Q"])


def test_knockdown_prior_sets_measured_targets():
    """Targets that are measured genes get control + the mean own-gene Δ of the training
    perturbations (clipped at 0); other genes keep the base baseline's prediction."""
    rng = np.random.default_rng(1)
    ctrl = rng.uniform(1.0, 2.0, N_GENES)
    knocked = {"g0": -0.8, "g1": -0.4}  # own-gene Δ of the two measured training targets
    profiles = {CTRL: ctrl}
    for gene, own in knocked.items():
        v = ctrl + rng.uniform(-0.2, 0.2, N_GENES)
        v[GENES.index(gene)] = ctrl[GENES.index(gene)] + own
        profiles[gene] = v
    profiles["OUTSIDE"] = ctrl + rng.uniform(-0.2, 0.2, N_GENES)  # target not measured
    train = exact_screen(profiles)
    tm = pm.TrainMean().fit(train, KEY, CTRL)
    tmk = pm.fit_baselines(train, KEY, CTRL, names=["train_mean_knockdown"])["train_mean_knockdown"]
    assert tmk.own_gene_delta_ == pytest.approx(np.mean(list(knocked.values())), abs=ATOL)
    pred, base = tmk.predict(["g3", "g4+g5", "UNMEASURED"]), tm.predict(["g3"])
    expected = base.loc["g3"].copy()
    expected["g3"] = ctrl[3] - 0.6
    np.testing.assert_allclose(pred.loc["g3"], expected, atol=ATOL)
    np.testing.assert_allclose(pred.loc["UNMEASURED"], base.loc["g3"], atol=ATOL)
    np.testing.assert_allclose(pred.loc["g4+g5", ["g4", "g5"]], ctrl[[4, 5]] - 0.6, atol=ATOL)
    # knock-up screens (CRISPRa): the sign comes from the training data
    up = exact_screen({CTRL: ctrl, "g0": np.where(np.arange(N_GENES) == 0, ctrl + 1.0, ctrl)})
    tmk_up = pm.KnockdownPrior(pm.TrainMean()).fit(up, KEY, CTRL)
    assert tmk_up.predict(["g2"]).loc["g2", "g2"] == pytest.approx(ctrl[2] + 1.0, abs=ATOL)
    # never below zero
    low = exact_screen({CTRL: ctrl * 0 + 0.1, "g0": np.where(np.arange(N_GENES) == 0, 0.0, 0.1)})
    assert pm.KnockdownPrior(pm.TrainMean()).fit(low, KEY, CTRL).predict(["g1"]).loc[
        "g1", "g1"
    ] == pytest.approx(0.0, abs=ATOL)


def test_fit_baselines(screen, planted):
    edges = pd.DataFrame({"source": ["D"], "target": ["A"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models = pm.fit_baselines(screen, KEY, CTRL, edges=edges)
    assert list(models) == list(pm.BASELINE_NAMES)
    assert "train_mean_knockdown" in models and "graph_neighbour_knockdown" in models
    with pytest.warns(UserWarning, match="graph_neighbour"):
        no_graph = pm.fit_baselines(screen, KEY, CTRL)
    assert not [name for name in no_graph if name.startswith("graph_neighbour")]
    single = pm.Additive().fit(screen, KEY, CTRL).predict(["A+B"])
    pd.testing.assert_frame_equal(models["additive"].predict(["A+B"]), single)
    with pytest.raises(ValueError, match="'ridge_model'"):
        pm.fit_baselines(screen, KEY, CTRL, names=["ridge_model"])
    df = pm.compare(
        {k: m for k, m in models.items()},
        exact_screen({CTRL: planted[0], "D": planted[0] + planted[1]["A"]}),
        KEY,
        CTRL,
    )
    assert set(df.method) == set(models)


def test_fit_does_not_modify_input(screen):
    edges = pd.DataFrame({"source": ["D"], "target": ["A"]})
    for adata in (screen, noisy_screen()):
        X_before = adata.X.copy()
        obs_before = adata.obs.copy()
        var_before = adata.var.copy()
        pm.fit_baselines(adata, KEY, CTRL, edges=edges)
        pm.SplitHalfCeiling().fit(adata, KEY, CTRL)
        pm.split_half_correlation(adata, KEY, CTRL)
        diff = adata.X != X_before
        assert (diff.nnz if sparse.issparse(diff) else diff.sum()) == 0
        pd.testing.assert_frame_equal(adata.obs, obs_before)
        pd.testing.assert_frame_equal(adata.var, var_before)
        assert not adata.layers and "log1p" not in adata.uns


def test_counts_layer(screen):
    layered = screen.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = sparse.csr_matrix(np.log1p(layered.X.toarray()))
    a = pm.TrainMean().fit(layered, KEY, CTRL, layer="counts").predict(["Z"])
    b = pm.TrainMean().fit(screen, KEY, CTRL).predict(["Z"])
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="'raw'"):
        pm.TrainMean().fit(layered, KEY, CTRL, layer="raw")


def test_bad_input(screen):
    with pytest.raises(ValueError, match="control_group 'ctrl'"):
        pm.TrainMean().fit(screen, KEY, "ctrl")
    with pytest.raises(ValueError, match="'condition'"):
        pm.TrainMean().fit(screen, "condition", CTRL)
    with pytest.raises(ValueError, match="not fitted"):
        pm.TrainMean().predict(["A"])
    only_ctrl = screen[screen.obs[KEY] == CTRL]
    with pytest.raises(ValueError, match="at least one perturbation"):
        pm.TrainMean().fit(only_ctrl, KEY, CTRL)
    with pytest.raises(ValueError, match="more than once"):
        pm.ControlMean().fit(screen, KEY, CTRL).predict(["A", "A"])


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_papalexi_train_mean_vs_control_mean(data_dir):
    adata = ad.read_h5ad(data_dir / "perturb" / "papalexi2021_thp1_subset.h5ad")
    key, control = "perturbation", "control"
    held_out = ["STAT1", "IFNGR1", "CD86", "ATF2", "MYC"]
    labels = adata.obs[key].astype(str).to_numpy()
    targets = sorted(set(labels) - {control})
    assert len(targets) == 25
    is_ctrl = labels == control
    is_held = np.isin(labels, held_out)
    fit_mask, eval_mask = pm.split_control(adata, key, control, seed=0)
    train = adata[(~is_ctrl & ~is_held) | fit_mask]
    assert train.obs[key].nunique() == 21  # 20 targets + control
    sel = is_held | is_ctrl
    adata_eval = adata[sel]
    X_before = adata.X.copy()

    models = pm.fit_baselines(train, key, control, names=("control_mean", "train_mean"))
    preds = {name: m.predict(held_out) for name, m in models.items()}
    assert preds["train_mean"].shape == (5, adata.n_vars)
    train_mean = pm.perturbed_mean_profile(train, key, control)
    df = pm.compare(
        preds,
        adata_eval,
        key,
        control,
        control_mask=eval_mask[sel],
        pred_control_mask=fit_mask[sel],
        train_mean=train_mean,
    )
    n_metrics = len(pm.metric_names(20))
    assert len(df) == 2 * 5 * n_metrics
    assert set(df.perturbation) == set(held_out)
    for m in ("pearson_delta", "pearson_delta_top20", "pearson_delta_pert"):
        assert df[df.metric == m]["value"].between(-1, 1).all()
    for m in ("discrimination", "direction_match_top20"):
        assert df[df.metric == m]["value"].between(0, 1).all()
    assert (df[df.metric.str.startswith("mse")]["value"] >= 0).all()

    strong = df.drop_duplicates("perturbation").set_index("perturbation")
    assert strong.loc["STAT1", "strong_effect"] or strong.loc["IFNGR1", "strong_effect"]
    assert not strong.loc["CD86", "strong_effect"] and not strong.loc["ATF2", "strong_effect"]

    v = df.set_index(["method", "perturbation", "metric"])["value"]
    # no-change against its own controls: Δ̂ = 0 exactly -> Pearson 0
    assert all(v[("control_mean", p, "pearson_delta")] == 0.0 for p in held_out)
    # train mean = the reference of the corrected view -> 0 there, but real signal on IFNGR1
    assert all(v[("train_mean", p, "pearson_delta_pert")] == 0.0 for p in held_out)
    assert v[("train_mean", "IFNGR1", "pearson_delta")] > 0.2

    s = pm.summarize(df, n_boot=200, by_strong_effect=True)
    assert set(s.method) == {"control_mean", "train_mean"}
    ok = s.dropna(subset=["ci_low"])
    assert ((ok.ci_low <= ok["mean"] + 1e-12) & (ok["mean"] <= ok.ci_high + 1e-12)).all()
    overall = pm.summarize(df, n_boot=200)
    assert len(overall) == 2 * n_metrics
    assert (adata.X != X_before).nnz == 0


def test_graph_neighbour_baselines_per_graph(screen):
    """A dict of edge tables fits each graph-neighbour baseline once per graph."""
    edges = {
        "a": pd.DataFrame({"source": ["D"], "target": ["A"]}),
        "b": pd.DataFrame({"source": ["D"], "target": ["B"]}),
    }
    names = ["train_mean", "graph_neighbour", "graph_neighbour_knockdown"]
    models = pm.fit_baselines(screen, KEY, CTRL, names=names, edges=edges)
    assert list(models) == [
        "train_mean",
        "graph_neighbour:a",
        "graph_neighbour:b",
        "graph_neighbour_knockdown:a",
        "graph_neighbour_knockdown:b",
    ]
    a = models["graph_neighbour:a"].predict(["D"]).to_numpy()
    single = pm.GraphNeighbourAverage(edges["a"]).fit(screen, KEY, CTRL).predict(["D"])
    np.testing.assert_allclose(a, single.to_numpy())
    assert not np.allclose(a, models["graph_neighbour:b"].predict(["D"]).to_numpy())
