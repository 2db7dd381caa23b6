"""cell-eval interoperability: the AnnData pair of ``to_cell_eval``, scoring with cell-eval
(skipped without the optional extra) and ``pertx benchmark --cell-eval``."""

import argparse
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pertx_scvi as px
from pertx_scvi import benchmark as bm
from pertx_scvi import metrics as pm
from pertx_scvi.benchmark import _run as run_module

HELD = ["REG01", "REG02", "REG01+REG02"]


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


@pytest.fixture(scope="module")
def screen(tiny_screen):
    """A tiny screen split like a held-out evaluation, and a prediction shaped like
    ``predict_perturbation`` output: ``X`` log1p values, ``layers["counts"]``,
    ``layers["mean"]``, ``obs["perturbation"]``; rows copied from observed cells."""
    adata = tiny_screen.copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    assert set(HELD) <= set(labels)
    fit, reference = pm.control_masks(adata, "perturbation", "control", seed=0)
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(labels == p), size=15, replace=True) for p in HELD]
    )
    counts = sparse.csr_matrix(adata.X[rows], dtype=np.float32)
    pred = ad.AnnData(
        X=_dense(pm.log_normalize(adata[rows])),
        obs=pd.DataFrame(
            {"perturbation": pd.Categorical(labels[rows], categories=HELD)},
            index=[f"pred_{i}" for i in range(len(rows))],
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
        layers={"counts": counts, "mean": counts.toarray() * 3.7 + 20.0},
    )
    real = adata[np.isin(labels, HELD) | reference].copy()
    return adata, pred, real, adata[fit].copy(), adata[(~np.isin(labels, HELD)) & ~reference]


def test_to_cell_eval_writes_the_pair_cell_eval_reads(screen, tmp_path):
    adata, pred, real, fit_controls, _ = screen
    # The real cells with their genes in another order: the output follows pred's genes.
    order = np.random.default_rng(1).permutation(real.n_vars)
    real_shuffled = real[:, order].copy()
    before = [(x.copy(), x.obs.copy(), x.var.copy()) for x in (pred, real_shuffled)]

    p, r = pm.to_cell_eval(
        pred, real_shuffled, pred_controls=fit_controls, write_dir=tmp_path / "ce"
    )

    genes = list(pred.var_names)
    assert list(p.var_names) == genes and list(r.var_names) == genes
    assert list(p.obs.columns) == ["target_gene"] and list(r.obs.columns) == ["target_gene"]
    labels_p = p.obs["target_gene"].astype(str)
    labels_r = r.obs["target_gene"].astype(str)
    assert set(labels_p) == set(labels_r) == {*HELD, "non-targeting"}
    # Control cells: the prediction's sources in pred, the reference controls in real.
    assert (labels_p == "non-targeting").sum() == fit_controls.n_obs
    assert (labels_r == "non-targeting").sum() == (real.obs["perturbation"] == "control").sum()
    assert labels_p.value_counts()[HELD].tolist() == [15, 15, 15]
    # Values: pred's X kept (already log1p), counts log-normalised (CP10k over all genes).
    np.testing.assert_allclose(_dense(p.X)[: pred.n_obs], pred.X, rtol=1e-6)
    np.testing.assert_allclose(
        _dense(p.X)[pred.n_obs :], _dense(pm.log_normalize(fit_controls)), rtol=1e-5
    )
    expected_real = _dense(pm.log_normalize(real))
    np.testing.assert_allclose(_dense(r.X), expected_real, rtol=1e-5)
    assert p.X.dtype == np.float32 and r.X.dtype == np.float32
    for out in (p, r):
        values = _dense(out.X)
        assert values.min() >= 0 and values.max() < 15 and np.any(values % 1 > 1e-3)
    # Inputs unchanged.
    for x, (X, obs, var) in zip((pred, real_shuffled), before, strict=True):
        np.testing.assert_array_equal(_dense(x.X), _dense(X.X))
        pd.testing.assert_frame_equal(x.obs, obs)
        pd.testing.assert_frame_equal(x.var, var)
    # The written files are the returned objects.
    written = ad.read_h5ad(tmp_path / "ce" / "pred.h5ad")
    assert list(written.var_names) == genes
    np.testing.assert_array_equal(_dense(written.X), _dense(p.X))
    assert (tmp_path / "ce" / "real.h5ad").is_file()


def test_to_cell_eval_options(screen):
    adata, pred, real, fit_controls, _ = screen
    # Sampled counts instead of X, log-normalised.
    p, _ = pm.to_cell_eval(pred, real, pred_controls=fit_controls, pred_layer="counts")
    by_hand = _dense(pm.log_normalize(ad.AnnData(X=pred.layers["counts"])))
    np.testing.assert_allclose(_dense(p.X)[: pred.n_obs], by_hand, rtol=1e-5)
    # As many predicted cells per label as were observed; other column and control names.
    p, r = pm.to_cell_eval(
        pred,
        real,
        pred_controls=fit_controls,
        match_cell_counts=True,
        pert_col="gene",
        control_pert="ctrl",
    )
    counts_p = p.obs["gene"].value_counts()
    counts_r = r.obs["gene"].value_counts()
    assert counts_p[HELD].tolist() == counts_r[HELD].tolist() == [10, 10, 10]
    assert counts_p["ctrl"] == fit_controls.n_obs and "control" not in counts_r.index
    # A subset of labels and genes; the real file drops labels not kept.
    genes = list(pred.var_names[::-1][:10])
    p, r = pm.to_cell_eval(
        pred, real, pred_controls=fit_controls, perturbations=["REG02"], genes=genes
    )
    assert set(r.obs["target_gene"]) == set(p.obs["target_gene"]) == {"REG02", "non-targeting"}
    assert list(p.var_names) == genes == list(r.var_names)
    # Control rows already in pred serve as its controls.
    with_controls = ad.concat([pred, fit_controls], merge="same")
    p, _ = pm.to_cell_eval(with_controls, real)
    assert (p.obs["target_gene"] == "non-targeting").sum() == fit_controls.n_obs
    # Without any: the real controls, with a warning about shared control noise.
    with pytest.warns(UserWarning, match="share one control mean"):
        p, r = pm.to_cell_eval(pred, real)
    np.testing.assert_allclose(
        _dense(p.X)[pred.n_obs :], _dense(r.X)[(r.obs["target_gene"] == "non-targeting").to_numpy()]
    )


def test_to_cell_eval_errors_name_the_problem(screen):
    adata, pred, real, fit_controls, _ = screen
    kw = {"pred_controls": fit_controls}
    with pytest.raises(ValueError, match="'condition' is not a column"):
        pm.to_cell_eval(pred, real, perturbation_key="condition", **kw)
    with pytest.raises(ValueError, match="'ctrl' has no cells"):
        pm.to_cell_eval(pred, real, control_group="ctrl", **kw)
    with pytest.raises(ValueError, match="pred: perturbation column 'label'"):
        pm.to_cell_eval(pred, real, pred_perturbation_key="label", **kw)
    only_two = real[real.obs["perturbation"] != "REG02"]
    with pytest.raises(ValueError, match="real has no cells of predicted perturbation.*'REG02'"):
        pm.to_cell_eval(pred, only_two, **kw)
    with pytest.raises(ValueError, match="pred has no cells of perturbation.*'REG05'"):
        pm.to_cell_eval(pred, real, perturbations=["REG05"], **kw)
    with pytest.raises(ValueError, match="real lacks 1 of the 40 genes: 'REG00'"):
        pm.to_cell_eval(pred, real[:, 1:], **kw)
    with pytest.raises(ValueError, match=r"layers\['mean'\]\) holds non-integer values up to"):
        pm.to_cell_eval(pred, real, pred_layer="mean", **kw)
    with pytest.raises(ValueError, match="layer 'raw' not in layers"):
        pm.to_cell_eval(pred, real, pred_layer="raw", **kw)
    negative = pred.copy()
    negative.X[0, 0] = -0.5
    with pytest.raises(ValueError, match="pred has negative values"):
        pm.to_cell_eval(negative, real, **kw)
    with pytest.raises(ValueError, match="control label of the output"):
        pm.to_cell_eval(pred, real, control_pert="REG01", **kw)
    blank = pred.copy()
    blank.obs["perturbation"] = "control"
    with pytest.raises(ValueError, match="no perturbed cells"):
        pm.to_cell_eval(blank, real, **kw)


def test_without_cell_eval_a_clear_message(screen, monkeypatch, tmp_path):
    _, pred, real, fit_controls, _ = screen
    monkeypatch.setitem(sys.modules, "cell_eval", None)  # import cell_eval -> ImportError
    with pytest.raises(ImportError, match=r"pip install pertx-scvi\[celleval\]"):
        pm.score_with_cell_eval(pred, real, pred_controls=fit_controls)

    # pertx benchmark --cell-eval stops before loading data or training anything.
    def no_training(*args, **kwargs):
        raise AssertionError("trained without cell-eval")

    monkeypatch.setattr(run_module, "_run_fold", no_training)
    with pytest.raises(ImportError, match=r"pip install pertx-scvi\[celleval\]"):
        bm.benchmark("not_a_file.h5ad", out=tmp_path / "b", cell_eval=True)
    assert not (tmp_path / "b").exists()
    parser = argparse.ArgumentParser()
    bm.add_benchmark_arguments(parser)
    args = parser.parse_args(["--quick", "--cell-eval", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"--cell-eval: .*pip install pertx-scvi\[celleval\]"):
        bm.run_benchmark(args)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # importing cell-eval and compiling its DE test take 20-30 s on 2 cores
def test_cell_eval_scores_the_written_pair(screen, tmp_path):
    cell_eval = pytest.importorskip("cell_eval")
    adata, pred, real, fit_controls, train = screen
    # cell-eval reads the written files as they are.
    pm.to_cell_eval(pred, real, pred_controls=fit_controls, write_dir=tmp_path / "pair")
    evaluator = cell_eval.MetricsEvaluator(
        adata_pred=str(tmp_path / "pair" / "pred.h5ad"),
        adata_real=str(tmp_path / "pair" / "real.h5ad"),
        control_pert="non-targeting",
        pert_col="target_gene",
        num_threads=1,
        outdir=str(tmp_path / "ce_out"),
    )
    results, _ = evaluator.compute(profile="minimal", write_csv=False)
    assert sorted(results["perturbation"].to_list()) == sorted(HELD)

    # The prediction (observed cells resampled) against the train-mean profile.
    train_mean = pm.perturbed_mean_profile(train, "perturbation", "control")
    scores = pm.score_with_cell_eval(
        pred,
        real,
        pred_controls=fit_controls,
        baseline=train_mean,
        outdir=tmp_path / "scored",
    )
    assert sorted(scores.results.index) == sorted(HELD)
    assert sorted(scores.baseline_results.index) == sorted(HELD)
    assert (scores.results["pearson_delta"] > 0.8).all()
    assert (
        scores.agg.loc["mean", "pearson_delta"] > scores.baseline_agg.loc["mean", "pearson_delta"]
    )
    assert scores.score.loc["pearson_delta", "from_baseline"] > 0.5
    assert 0 < scores.score.loc["avg_score", "from_baseline"] <= 1
    assert {"results.csv", "agg_results.csv", "score.csv", "real_de.csv"} <= {
        f.name for f in (tmp_path / "scored").iterdir()
    }
    tidy = scores.tidy("PertTX", "train_mean")
    assert set(tidy["method"]) == {"PertTX", "train_mean"}
    assert set(tidy["perturbation"]) == set(HELD)
    assert scores.version


@pytest.mark.slow
def test_benchmark_cell_eval_scores_each_fold(tmp_path, monkeypatch):
    pytest.importorskip("cell_eval")
    adata, _, network = px.datasets.simulate(
        n_genes=40,
        n_regulators=6,
        n_modules=2,
        n_control_cells=80,
        n_cells_per_perturbation=12,
        targets_per_module=6,
        n_combinations=0,
        seed=0,
    )
    graph, _ = bm.load_graph("simulated", network)
    settings = {
        "out": tmp_path / "run",
        "folds": 2,
        "graph": graph,
        "baselines": ["train_mean"],
        "linear_embedding": "pca",
        "n_boot": 20,
        "progress": False,
        "plots": False,
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "epochs": 1,
    }
    out = bm.benchmark(adata.copy(), cell_eval=True, **settings)
    per_label = pd.read_csv(out / "cell_eval.csv")
    score = pd.read_csv(out / "cell_eval_score.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(per_label["method"]) == {"PertTX", "train_mean"}
    scored = per_label[per_label["method"] == "PertTX"].groupby("fold")["perturbation"]
    expected = metrics[metrics["method"] == "PertTX"].groupby("fold")["perturbation"]
    assert scored.agg(lambda s: sorted(set(s))).equals(expected.agg(lambda s: sorted(set(s))))
    assert {"pearson_delta", "mae", "discrimination_score_l1"} <= set(per_label["metric"])
    assert set(score["fold"]) == {0, 1} and "avg_score" in set(score["metric"])
    assert score.loc[score["metric"] == "avg_score", "from_baseline"].between(0, 1).all()
    text = (out / "summary.md").read_text()
    assert "## cell-eval" in text and "| **avg_score** |" in text

    # A rerun with --cell-eval takes every fold from the cache; one without it too.
    def no_training(*args, **kwargs):
        raise AssertionError("a cached fold was recomputed")

    monkeypatch.setattr(run_module, "_run_fold", no_training)
    bm.benchmark(adata.copy(), cell_eval=True, **settings)
    pd.testing.assert_frame_equal(pd.read_csv(out / "cell_eval_score.csv"), score)
    bm.benchmark(adata.copy(), **settings)
    assert "## cell-eval" not in (out / "summary.md").read_text()
