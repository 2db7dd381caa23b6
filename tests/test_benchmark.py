"""`pertx benchmark`: splits, GEARS subgroups, the fold cache and the written report."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

import pertx_scvi as px
from pertx_scvi import benchmark as bm
from pertx_scvi.benchmark import _cli, _report
from pertx_scvi.benchmark import _run as run_module

TINY_SIM = {
    "n_genes": 40,
    "n_regulators": 6,
    "n_modules": 2,
    "n_control_cells": 80,
    "n_cells_per_perturbation": 12,
    "targets_per_module": 6,
    "seed": 0,
}
TINY_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "epochs": 1, "batch_size": 64}


# ---- splits ------------------------------------------------------------------------------------
def test_kfold_follows_the_documented_recipe():
    labels = ["control", "B", "A", "D", "C", "E", "control", "A"]
    folds = bm.kfold_perturbations(labels, n_folds=2, seed=3)
    permuted = np.random.default_rng(3).permutation(np.array(["A", "B", "C", "D", "E"], object))
    assert folds == [list(permuted[:3]), list(permuted[3:])]
    assert folds == bm.kfold_perturbations(labels[::-1], n_folds=2, seed=3)  # order-free
    assert folds != bm.kfold_perturbations(labels, n_folds=2, seed=4)


def test_kfold_holds_out_every_label_once():
    labels = [f"G{i}" for i in range(25)] + ["control", "ctrl"]
    folds = bm.kfold_perturbations(labels, n_folds=5, seed=0)
    flat = [label for fold in folds for label in fold]
    assert sorted(flat) == sorted(labels[:25])
    assert [len(f) for f in folds] == [5] * 5
    with pytest.raises(ValueError, match="cannot cut 25 labels into 30 folds"):
        bm.kfold_perturbations(labels, n_folds=30)
    with pytest.raises(ValueError, match=">= 2"):
        bm.kfold_perturbations(labels, n_folds=1)


def test_assign_subgroups_counts_genes_seen_alone_in_training():
    train = ["control", "B", "E", "C+F", "B+E"]
    held = ["A", "A+B", "C+D", "B+E", "A+ctrl"]
    groups = bm.assign_subgroups(held, train)
    assert groups.to_dict() == {
        "A": "unseen_single",
        "A+B": "combo_seen1",
        "C+D": "combo_seen0",  # C was only perturbed inside a combination
        "B+E": "combo_seen2",
        "A+ctrl": "unseen_single",
    }


@pytest.fixture(scope="module")
def combination_labels():
    adata, truth, _ = px.datasets.simulate(
        n_genes=60,
        n_regulators=10,
        n_modules=2,
        n_combinations=12,
        n_cells_per_perturbation=2,
        n_control_cells=10,
        seed=1,
    )
    return sorted(truth.index)


def test_gears_splits_on_simulated_combinations(combination_labels):
    labels = combination_labels
    singles = [label for label in labels if "+" not in label]
    combos = [label for label in labels if "+" in label]
    assert len(combos) == 12
    folds = bm.gears_splits(labels + ["control"], n_folds=3, seed=0)
    assert len(folds) == 3
    # Every single is held out exactly once, every combination at least once.
    held_singles = [label for fold in folds for label in fold if "+" not in label]
    assert sorted(held_singles) == singles
    assert set(combos) <= {label for fold in folds for label in fold}
    seen2_count = dict.fromkeys(combos, 0)
    kinds = set()
    for held in folds:
        train = [label for label in labels if label not in held]
        unseen = {label for label in held if "+" not in label}
        # No training label touches an unseen gene.
        assert not any(set(t.split("+")) & unseen for t in train)
        # Every combination with an unseen gene is held out.
        assert all(c in held for c in combos if set(c.split("+")) & unseen)
        groups = bm.assign_subgroups(held, train)
        assert list(groups.index) == held
        for label, group in groups.items():
            genes = label.split("+")
            n_seen = sum(g not in unseen for g in genes)
            expected = "unseen_single" if len(genes) == 1 else f"combo_seen{n_seen}"
            assert group == expected, (label, group)
            kinds.add(group)
            if group == "combo_seen2":
                seen2_count[label] += 1
    assert max(seen2_count.values()) <= 1
    assert {"unseen_single", "combo_seen1", "combo_seen2"} <= kinds
    # Deterministic in the seed.
    assert folds == bm.gears_splits(labels, n_folds=3, seed=0)
    assert folds != bm.gears_splits(labels, n_folds=3, seed=1)


# ---- command line -------------------------------------------------------------------------------
def _parser():
    parser = argparse.ArgumentParser(prog="pertx benchmark")
    bm.add_benchmark_arguments(parser)
    return parser


def test_cli_flags_parse_and_command_line_is_rebuilt(monkeypatch):
    args = _parser().parse_args(
        ["--data", "papalexi2021", "--folds", "5", "--graph", "go,omnipath", "--no-split-control"]
    )
    assert args.data == "papalexi2021" and args.folds == 5 and args.graph == "go,omnipath"
    assert args.split_control is False and args.quick is False and args.epochs is None
    monkeypatch.setattr("sys.argv", ["pytest"])
    command = _cli._command_line(args)
    assert command == (
        "pertx benchmark --data papalexi2021 --folds 5 --no-split-control --graph go,omnipath"
    )
    monkeypatch.setattr("sys.argv", ["/usr/bin/pertx", "benchmark", "--quick"])
    assert _cli._command_line(_parser().parse_args(["--quick"])) == "pertx benchmark --quick"


def test_quick_presets_yield_to_explicit_values():
    assert run_module._resolve(None, "epochs", quick=True) == bm.QUICK["epochs"]
    assert run_module._resolve(None, "epochs", quick=False) == bm.DEFAULTS["epochs"]
    assert run_module._resolve(7, "epochs", quick=True) == 7


def test_load_graph_names_and_errors():
    _, _, network = px.datasets.simulate(**TINY_SIM)
    graph, names = bm.load_graph("simulated", network)
    assert names == ["simulated"] and graph.n_edges > 0
    assert set(graph.edges["source"]) <= set(network["source"])
    assert (graph.edges["weight"] > 0).all()
    assert bm.load_graph("none") == (None, [])
    assert bm.load_graph(None) == (None, [])
    with pytest.raises(ValueError, match="--data simulated"):
        bm.load_graph("simulated", None)
    with pytest.raises(FileNotFoundError, match="not_a_graph"):
        bm.load_graph("not_a_graph.csv")


@pytest.mark.realdata
def test_load_graph_from_the_data_folder(data_dir):
    graph, names = bm.load_graph("go,trrust", data_dir=data_dir)
    assert names == ["go", "trrust"]
    assert {"go", "trrust"} <= set(graph.relations)
    assert "STAT1" in graph


# ---- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    adata, _, network = px.datasets.simulate(**TINY_SIM, n_combinations=0)
    graph, _ = bm.load_graph("simulated", network)
    return adata, graph


def _run(adata, graph, out, **kwargs):
    settings = {
        "out": out,
        "folds": 2,
        "graph": graph,
        "linear_embedding": "pca",
        "n_boot": 50,
        "progress": False,
        "command": "pertx benchmark --test",
        **TINY_MODEL,
        **kwargs,
    }
    return bm.benchmark(adata.copy(), **settings)


def test_benchmark_writes_report_and_skips_finished_folds(tiny, tmp_path, monkeypatch):
    adata, graph = tiny
    out = _run(adata, graph, tmp_path / "run")
    assert out == tmp_path / "run"
    df = pd.read_csv(out / "metrics.csv")
    assert set(df["fold"]) == {0, 1}
    assert set(df["method"]) == {"PertTX", *px.metrics.BASELINE_NAMES}
    assert set(df["subgroup"]) == {"unseen_single"}
    # Every regulator is held out in exactly one fold, scored once per method and metric.
    per = df.groupby(["method", "metric"])["perturbation"].agg(lambda s: sorted(s))
    regulators = sorted(f"REG{i:02d}" for i in range(6))
    assert all(v == regulators for v in per)
    control_rows = df[(df.method == "control_mean") & (df.metric == "pearson_delta")]
    assert np.allclose(control_rows["value"], 0.0)  # split-control: no shared noise

    summary_md = (out / "summary.md").read_text()
    assert summary_md.splitlines()[3] == "pertx benchmark --test"
    assert "**wall time**" in summary_md and "2 fold(s) trained" in summary_md
    assert "## All held-out perturbations (6)" in summary_md
    assert "| pearson_delta |" in summary_md
    assert "## PertTX minus each method, paired over perturbations" in summary_md
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["method"]) == set(px.metrics.BASELINE_NAMES)
    assert set(paired["verdict"]) <= {"ahead", "behind", "tie", "too few"}
    # discrimination ranks all 6 held-out regulators of both folds together
    assert {"discrimination", "discrimination_fold"} <= set(df["metric"])
    pooled = df[(df.method == "control_mean") & (df.metric == "discrimination")]["value"]
    assert pooled.mean() == pytest.approx(px.metrics.discrimination_chance(6), abs=0.1)
    per_fold = summary_md.split("## Per fold", 1)[1]
    assert "### pearson_delta_top20" in per_fold and "### discrimination_fold" in per_fold
    assert "| method | fold 0 | fold 1 | mean of folds |" in per_fold
    summary = pd.read_csv(out / "summary.csv")
    assert {"set", "method", "metric", "mean", "ci_low", "ci_high"} <= set(summary.columns)
    for name in ("metric_bars_all.png", "effect_scatter.png", "de_heatmap.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "loss_curves_fold0.png").is_file()
    for k in (0, 1):
        assert (out / "folds" / f"fold_{k}.csv").is_file()
        info = json.loads((out / "folds" / f"fold_{k}.json").read_text())
        assert info["hash"] == json.loads((out / "config.json").read_text())["hash"]

    # A rerun trains nothing and reproduces the same metrics.
    def no_training(*args, **kwargs):
        raise AssertionError("a cached fold was recomputed")

    monkeypatch.setattr(run_module, "_run_fold", no_training)
    _run(adata, graph, out, plots=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), df)
    assert "0 fold(s) trained, 2 from the cache" in (out / "summary.md").read_text()

    # Only the missing fold is recomputed.
    (out / "folds" / "fold_1_deltas.csv.gz").unlink()
    monkeypatch.undo()
    original, calls = run_module._run_fold, []

    def spy(fold, *args, **kwargs):
        calls.append(fold)
        return original(fold, *args, **kwargs)

    monkeypatch.setattr(run_module, "_run_fold", spy)
    _run(adata, graph, out, plots=False)
    assert calls == [1]

    # Other settings in the same folder are refused instead of mixing results.
    with pytest.raises(ValueError, match="other settings"):
        _run(adata, graph, out, lr=0.5, plots=False)


def test_benchmark_without_graph_reports_what_pertx_cannot_predict(tmp_path):
    adata, _, _ = px.datasets.simulate(**{**TINY_SIM, "n_combinations": 3})
    out = _run(
        adata,
        None,
        tmp_path / "nograph",
        split="kfold",
        baselines=["control_mean", "train_mean", "additive"],
        plots=False,
    )
    df = pd.read_csv(out / "metrics.csv")
    assert "graph_neighbour" not in set(df["method"])
    labels = set(adata.obs["perturbation"].astype(str)) - {"control"}
    pertx = df[(df.method == "PertTX") & (df.metric == "mse")]
    for fold, rows in pertx.groupby("fold"):
        trained = {g for label in labels - set(rows.perturbation) for g in label.split("+")}
        for label, value in zip(rows.perturbation, rows.value, strict=True):
            # The label encoder embeds only genes that training perturbed (alone or combined).
            assert np.isnan(value) == (not set(label.split("+")) <= trained), (fold, label)
    assert pertx["value"].isna().any() and pertx["value"].notna().any()
    # Every method covers every held-out label.
    counts = df[df.metric == "mse"].groupby("method")["perturbation"].nunique()
    assert counts.nunique() == 1
    text = (out / "summary.md").read_text()
    assert "could not embed" in text
    assert not (out / "plots").exists()


def test_summary_table_bolds_the_best_mean_per_metric():
    summary = pd.DataFrame(
        {
            "method": ["PertTX", "train_mean"] * 2,
            "metric": ["pearson_delta", "pearson_delta", "mse", "mse"],
            "n": [5, 5, 5, 5],
            "mean": [0.4, 0.3, 0.2, 0.1],
            "ci_low": [0.3, 0.2, 0.1, 0.05],
            "ci_high": [0.5, 0.4, 0.3, 0.15],
        }
    )
    table = _report._markdown_table(summary, ["pearson_delta", "mse"]).splitlines()
    assert table[0] == "| metric | PertTX | train_mean |"
    assert table[2] == "| pearson_delta | **0.400 [0.300, 0.500]** | 0.300 [0.200, 0.400] |"
    assert table[3] == "| mse (↓) | 0.200 [0.100, 0.300] | **0.100 [0.050, 0.150]** |"
    assert table[4] == "| n perturbations | 5 | 5 |"


def test_predicted_profiles_expected_and_sampled(tiny):
    """predict_profiles: 'expected' is the mean of predict_perturbation's X, 'sampled' the mean
    of log-normalised sampled counts (their agreement: tests/test_model.py)."""
    adata, graph = tiny
    adata = adata.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    model = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2, gene_graph=graph)
    model.train(max_epochs=1, enable_progress_bar=False, validation_size=0.0)
    sources = adata[adata.obs["perturbation"] == "control"][:40]
    labels = ["REG01", "REG02+REG03"]
    sampled = model.predict_profiles(sources, labels, profile="sampled", n_samples=2, seed=5)
    assert list(sampled.index) == labels and list(sampled.columns) == list(adata.var_names)
    prediction = model.predict_perturbation(sources, ["REG01"], n_samples=2, seed=5)
    counts = prediction.layers["counts"].toarray()
    by_hand = np.log1p(1e4 * counts / counts.sum(1, keepdims=True)).mean(0)
    np.testing.assert_allclose(sampled.loc["REG01"], by_hand, rtol=1e-5)
    expected = model.predict_profiles(sources, labels, seed=5)
    np.testing.assert_allclose(
        expected.loc["REG01"], prediction.X[prediction.obs["sample"] == 0].mean(0), rtol=1e-5
    )
    with pytest.raises(ValueError, match="'mean'"):
        model.predict_profiles(sources, labels, profile="mean")


def test_shuffled_graph_control_trains_a_second_model_per_fold(tiny, tmp_path, monkeypatch):
    """--shuffled-graph: the same PertTX given a rewired graph, scored on the same labels."""
    adata, graph = tiny
    given = []
    original = run_module._run_fold

    def spy(*args, **kwargs):
        given.append(args[9])  # model_graph
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "_run_fold", spy)
    out = _run(adata, graph, tmp_path / "shuffled", baselines=["train_mean"], shuffled_graph=True)
    df = pd.read_csv(out / "metrics.csv")
    assert set(df["method"]) == {"PertTX", "train_mean", "PertTX_shuffled_graph"}
    per_method = df.groupby("method")["perturbation"].agg(lambda s: sorted(set(s)))
    assert per_method["PertTX_shuffled_graph"] == per_method["PertTX"]
    # Per fold: the real graph, then a degree-preserving rewiring of it.
    assert len(given) == 4 and given[0] is graph
    shuffled = given[1]
    assert shuffled.n_edges == graph.n_edges
    assert not shuffled.edges[["source", "target"]].equals(graph.edges[["source", "target"]])
    assert "PertTX_shuffled_graph" in (out / "summary.md").read_text()
    assert given[3] is shuffled  # rewired once, shared by the folds
    with pytest.raises(ValueError, match="shuffled_graph needs a gene graph"):
        _run(adata, None, tmp_path / "no_graph", shuffled_graph=True)


def test_replicate_scores_every_method_against_half_the_cells(tiny, tmp_path, monkeypatch):
    """--replicate: the split-half replicate beside PertTX and the baselines, on the same
    cells, and the Virtual Cell Challenge score from them."""
    adata, graph = tiny
    out = _run(adata, graph, tmp_path / "replicate", baselines=["train_mean"], replicate=True)
    replicated = pd.read_csv(out / "replicate_metrics.csv")
    assert set(replicated["method"]) == {"PertTX", "train_mean", "split_half"}
    assert set(replicated["perturbation"]) == set(pd.read_csv(out / "metrics.csv").perturbation)
    # Half of the cells repeat the experiment: on simulated regulators far better than the
    # train mean (every regulator has a strong effect).
    wide = replicated[replicated.metric == "pearson_delta"].pivot_table(
        index="perturbation", columns="method", values="value"
    )
    assert (wide["split_half"] > wide["train_mean"]).all()
    vcc = pd.read_csv(out / "vcc_score.csv")
    assert list(vcc["metric"]) == [
        "pearson_delta",
        "pearson_delta_top20",
        "mse_top20",
        "discrimination",
    ]
    row = vcc.set_index("metric").loc["pearson_delta"]
    expected = (row.method_mean - row.baseline_mean) / (row.replicate_mean - row.baseline_mean)
    assert row.s == pytest.approx(expected)
    assert row.best_baseline == "train_mean"
    assert "## Virtual Cell Challenge score" in (out / "summary.md").read_text()
    # Cached: the replicate tables come back from the fold files.
    again = _run(adata, graph, out, baselines=["train_mean"], replicate=True, plots=False)
    pd.testing.assert_frame_equal(pd.read_csv(again / "vcc_score.csv"), vcc)

    # A run made without --replicate is scored from its stored predictions, training nothing.
    earlier = _run(adata, graph, tmp_path / "earlier", baselines=["train_mean"], plots=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached fold was recomputed")

    monkeypatch.setattr(run_module, "_run_fold", no_training)
    _run(adata, graph, earlier, baselines=["train_mean"], replicate=True, plots=False)
    from_cache = pd.read_csv(earlier / "replicate_metrics.csv")
    pd.testing.assert_frame_equal(from_cache, replicated, check_exact=False, atol=1e-6)
