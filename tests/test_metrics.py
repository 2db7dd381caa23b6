"""Tests of pertx_scvi.metrics: metric functions, traps, compare and summarize."""

from __future__ import annotations

import ast
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import pertx_scvi.metrics as pm
from pertx_scvi.datasets import simulate

KEY, CTRL = "perturbation", "ctrl"
EFFECTS = {
    "A": {0: 1.5, 1: -1.0, 6: 0.8},
    "B": {2: 1.2, 3: 1.0},
    "C": {4: -1.5, 5: 1.0, 7: 0.7},
    "N": {},
}


def make_screen(
    seed: int = 0,
    n_genes: int = 40,
    n_ctrl: int = 300,
    n_per: int = 150,
    effects: dict[str, dict[int, float]] | None = None,
    as_sparse: bool = True,
) -> ad.AnnData:
    """Poisson counts with planted log-fold changes per perturbation."""
    rng = np.random.default_rng(seed)
    effects = EFFECTS if effects is None else effects
    base = rng.lognormal(mean=1.5, sigma=0.7, size=n_genes)
    labels = [CTRL] * n_ctrl + [p for p in effects for _ in range(n_per)]
    lfc = np.zeros((len(labels), n_genes))
    start = n_ctrl
    for eff in effects.values():
        for g, v in eff.items():
            lfc[start : start + n_per, g] = v
        start += n_per
    size = rng.lognormal(0.0, 0.2, size=(len(labels), 1))
    counts = rng.poisson(base[None, :] * np.exp(lfc) * size).astype(np.float32)
    obs = pd.DataFrame(
        {KEY: pd.Categorical(labels)}, index=[f"cell{i}" for i in range(len(labels))]
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(X=sparse.csr_matrix(counts) if as_sparse else counts, obs=obs, var=var)


def observed_means(adata: ad.AnnData, labels: list[str]) -> pd.DataFrame:
    """Mean log1p-normalised profile per label, computed independently of compare()."""
    X = pm.log_normalize(adata)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    lab = adata.obs[KEY].astype(str).to_numpy()
    rows = [X[lab == p].astype(np.float64).mean(axis=0) for p in labels]
    return pd.DataFrame(np.vstack(rows), index=labels, columns=adata.var_names)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def test_parse_perturbation():
    assert pm.parse_perturbation("STAT1") == ("STAT1",)
    assert pm.parse_perturbation("B+A") == ("A", "B")
    assert pm.parse_perturbation("A+ctrl") == ("A",)
    assert pm.parse_perturbation("ctrl+A") == ("A",)
    assert pm.parse_perturbation("ctrl") == ()
    assert pm.parse_perturbation("A+A") == ("A",)
    assert pm.parse_perturbation("control", control_tokens=("ctrl", "control")) == ()
    assert pm.parse_perturbation("A_B", separator="_") == ("A", "B")
    assert pm.canonical_label("B+ctrl+A") == "A+B"
    with pytest.raises(ValueError):
        pm.parse_perturbation(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# elementary metrics, hand-computed
# ---------------------------------------------------------------------------------------------


def test_pearson_hand_computed():
    # x̄ = 2, ȳ = 8/3; Σxy_c = 4, Σx_c² = 2, Σy_c² = 78/9  ->  r = 4 / sqrt(2 * 78 / 9)
    r = pm.pearson([1, 2, 3], [1, 2, 5])
    assert r == pytest.approx(4 / np.sqrt(2 * 78 / 9))
    assert pm.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    rows = pm.pearson_rows(np.array([[1, 2, 3], [1, 2, 3]]), np.array([[2, 4, 6], [3, 2, 1]]))
    np.testing.assert_allclose(rows, [1.0, -1.0])


def test_pearson_constant_is_zero():
    assert pm.pearson([0, 0, 0], [1, 2, 3]) == 0.0
    assert pm.pearson([0.1, 0.1, 0.1], [1, 5, 3]) == 0.0
    assert pm.pearson([1, 2, 3], [2, 2, 2]) == 0.0
    # spread below atol counts as constant (round-off of a no-change prediction)
    r = pm.pearson_rows(np.array([[1e-12, -1e-12, 0.0]]), np.array([[1.0, 2.0, 3.0]]), 1e-9)
    assert r[0] == 0.0
    assert not np.isnan(pm.pearson(np.zeros(5), np.zeros(5)))


def test_mse_mae_hand_computed():
    pred, obs = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    assert pm.mse(pred, obs) == pytest.approx(5 / 3)  # (1 + 0 + 4) / 3
    assert pm.mae(pred, obs) == pytest.approx(1.0)  # (1 + 0 + 2) / 3


def test_direction_match_hand_computed():
    # signs: (+,+) (-,+) (0,0) (+,-) -> matches at 0 and 2
    assert pm.direction_match([1, -1, 0, 2], [2, 1, 0, -1]) == pytest.approx(0.5)
    assert pm.direction_match([0, 0], [1, -1]) == 0.0


def test_discrimination_hand_computed():
    obs = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    pred = np.array([[0.9, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # cell-eval's normalisation: 1 - rank / N with N = 3 perturbations
    # p0: d = (0.9, 0.1, 2.1) -> one other nearer, rank 1 -> 1 - 1/3
    # p1: d = (1, 0, 2) -> rank 0 -> 1
    # p2: d = (2, 1, 1) -> tie with p1 counts half -> 1 - 0.5/3
    np.testing.assert_allclose(pm.discrimination_score(pred, obs), [2 / 3, 1.0, 1 - 0.5 / 3])
    # leaving out gene 0 of p0 (its target) leaves only gene 1: both others tie, rank 2 * ½
    exclude = [[0], [], []]
    np.testing.assert_allclose(pm.discrimination_score(pred, obs, exclude)[0], 2 / 3)
    obs2 = np.array([[0.0, 5.0], [1.0, 0.0], [3.0, 0.0]])
    pred2 = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    # without exclusion p0 is nearer to both others' observations (rank 2); excluding gene 1
    # fixes that
    assert pm.discrimination_score(pred2, obs2)[0] == pytest.approx(1 / 3)
    assert pm.discrimination_score(pred2, obs2, [[1], [], []])[0] == 1.0
    assert np.isnan(pm.discrimination_score(pred[:1], obs[:1])[0])


def test_pooled_discrimination_constant_is_chance_and_perfect_is_one():
    """25 perturbations of a simulated screen: a constant prediction scores chance
    ((N + 1) / 2N, within 0.05), the observed effects themselves score 1."""
    adata, _, _ = simulate(seed=3, n_genes=60, n_regulators=25, n_modules=5, n_combinations=0)
    labels = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    assert len(labels) == 25
    observed = observed_means(adata, labels) - observed_means(adata, ["control"]).iloc[0]
    constant = pd.DataFrame(0.0, index=observed.index, columns=observed.columns)
    chance = pm.discrimination_chance(len(labels))
    assert chance == pytest.approx(0.52)
    assert pm.pooled_discrimination(constant, observed).mean() == pytest.approx(chance, abs=0.05)
    assert (pm.pooled_discrimination(observed, observed) == 1.0).all()
    # a prediction that cannot be made (NaN row) is not scored and not ranked
    partial = observed.copy()
    partial.iloc[0] = np.nan
    scores = pm.pooled_discrimination(partial, observed)
    assert np.isnan(scores.iloc[0]) and (scores.iloc[1:] == 1.0).all()


def test_masked_pearson_leaves_genes_out():
    x = np.array([[1.0, 2.0, 3.0, 100.0]])
    y = np.array([[1.0, 2.0, 3.0, -100.0]])
    mask = np.array([[True, True, True, False]])
    assert pm.pearson_rows(x, y)[0] < 0
    assert pm.pearson_rows(x, y, mask=mask)[0] == pytest.approx(1.0)


def test_paired_differences_verdicts():
    """'ahead' only when the paired interval excludes 0 in the metric's direction."""
    rng = np.random.default_rng(0)
    perts = [f"P{i}" for i in range(30)]
    base = rng.normal(0.3, 0.1, 30)
    rows = []
    for method, shift in (("ref", 0.0), ("worse", -0.2), ("same", 0.0)):
        noise = rng.normal(0, 0.01, 30) if method == "same" else 0.0
        for metric, sign in (("pearson_delta", 1), ("mse_top20", -1)):
            values = base + shift * sign + noise
            rows += [
                {"method": method, "perturbation": p, "metric": metric, "value": v}
                for p, v in zip(perts, values, strict=True)
            ]
    df = pd.DataFrame(rows)
    out = pm.paired_differences(df, reference="ref", n_boot=500).set_index(["method", "metric"])
    assert out.loc[("worse", "pearson_delta"), "verdict"] == "ahead"
    assert out.loc[("worse", "mse_top20"), "verdict"] == "ahead"  # lower error is better
    assert out.loc[("worse", "mse_top20"), "difference"] == pytest.approx(-0.2)
    assert out.loc[("same", "pearson_delta"), "verdict"] == "tie"
    with pytest.raises(ValueError, match="not in df"):
        pm.paired_differences(df, reference="PertTX")


def test_compare_reports_every_metric_without_the_target_genes():
    """A prediction that gets only the knocked-out gene right scores well with the target and
    0 without it."""
    effects = {"g0": {0: -1.5, 1: 1.0}, "g2": {2: -1.2, 5: 0.5}, "g4": {4: -1.0, 6: 0.8}}
    labels = list(effects)
    adata = make_screen(effects=effects)
    obs = observed_means(adata, labels)
    ctrl = observed_means(adata, [CTRL]).iloc[0].to_numpy()
    only_target = pd.DataFrame(np.tile(ctrl, (3, 1)), index=labels, columns=obs.columns)
    for p in labels:
        only_target.loc[p, p] = obs.loc[p, p]
    df = pm.compare({"m": only_target}, adata, KEY, CTRL, n_top_de=3)
    assert set(pm.metric_names(3, with_train_mean=False)) == set(df.metric)
    v = df.set_index(["perturbation", "metric"])["value"]
    for p in labels:
        assert v[(p, "pearson_delta")] > 0.3
        assert v[(p, "pearson_delta_nontarget")] == 0.0
        assert v[(p, "pearson_delta_top3_nontarget")] == 0.0
        assert v[(p, "mse_nontarget")] < v[(p, "mse")] + 1.0  # defined and finite


def test_de_gene_overlap_hand_computed():
    pred = np.array([5.0, -4.0, 0.1, 3.0])
    # k = 2 observed DE genes {0, 2}; top-2 predicted by |Δ̂| = {0, 1} -> 1/2
    assert pm.de_gene_overlap(pred, [0, 2]) == pytest.approx(0.5)
    assert pm.de_gene_overlap(pred, [0, 1, 3]) == pytest.approx(1.0)
    assert np.isnan(pm.de_gene_overlap(pred, []))


def test_top_genes_handles_nan():
    np.testing.assert_array_equal(pm.top_genes([np.nan, -3.0, 1.0, 2.0], 3), [1, 3, 2])


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 1.0, size=(30, 6))
    b = rng.normal(0.0, 2.0, size=(45, 6))
    t, p = pm.welch_ttest(a.mean(0), a.var(0, ddof=1), len(a), b.mean(0), b.var(0, ddof=1), len(b))
    ref = stats.ttest_ind(a, b, equal_var=False)
    np.testing.assert_allclose(t, ref.statistic)
    np.testing.assert_allclose(p, ref.pvalue)
    # zero variances: equal means -> t 0, p 1; different means -> inf, p 0
    t0, p0 = pm.welch_ttest(np.array([1.0, 2.0]), np.zeros(2), 5, np.array([1.0, 1.0]), 0.0, 5)
    assert t0[0] == 0 and p0[0] == 1 and np.isinf(t0[1]) and p0[1] == 0


def test_benjamini_hochberg_hand_computed():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01 0.03 0.04 0.2 -> *4/rank = 0.04 0.06 0.0533 0.2 -> cumulative min from the end
    expected = np.array([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(pm.benjamini_hochberg(p), expected)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(3, 50)) ** 3
    ref = np.vstack([stats.false_discovery_control(row) for row in p])
    np.testing.assert_allclose(pm.benjamini_hochberg(p), ref)


# ---------------------------------------------------------------------------------------------
# traps
# ---------------------------------------------------------------------------------------------


def test_split_control():
    adata = make_screen()
    fit, ev = pm.split_control(adata, KEY, CTRL, seed=3)
    is_ctrl = (adata.obs[KEY] == CTRL).to_numpy()
    assert not np.any(fit & ev)
    np.testing.assert_array_equal(fit | ev, is_ctrl)
    assert fit.sum() == 150 and ev.sum() == 150
    fit2, _ = pm.split_control(adata, KEY, CTRL, seed=3)
    np.testing.assert_array_equal(fit, fit2)
    with pytest.raises(ValueError, match="control_group 'nope'"):
        pm.split_control(adata, KEY, "nope")


def test_split_half_correlation_flags_strong_effects():
    adata = make_screen(effects={"A": {i: 1.5 for i in range(10)}, "N": {}})
    res = pm.split_half_correlation(adata, KEY, CTRL)
    assert list(res.index) == ["A", "N"]
    assert list(res.columns) == ["n_cells", "split_half_r", "strong_effect"]
    assert res.loc["A", "split_half_r"] > 0.9 and res.loc["A", "strong_effect"]
    assert abs(res.loc["N", "split_half_r"]) < 0.3 and not res.loc["N", "strong_effect"]
    assert res.loc["A", "n_cells"] == 150
    # deterministic per label, whatever else is asked for
    only_a = pm.split_half_correlation(adata, KEY, CTRL, perturbations=["A"])
    assert only_a.loc["A", "split_half_r"] == pytest.approx(res.loc["A", "split_half_r"])
    with pytest.raises(ValueError, match="'Z'"):
        pm.split_half_correlation(adata, KEY, CTRL, perturbations=["Z"])


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


PERTS = ["A", "B", "C", "N"]


def test_compare_perfect_prediction():
    adata = make_screen()
    perfect = observed_means(adata, PERTS)
    df = pm.compare({"perfect": perfect}, adata, KEY, CTRL, n_top_de=5)
    assert list(df.columns[:5]) == ["method", "perturbation", "metric", "value", "strong_effect"]
    assert set(df["metric"]) == set(pm.metric_names(5, with_train_mean=False))
    v = df.set_index(["perturbation", "metric"])["value"]
    for p in PERTS:
        assert v[(p, "pearson_delta")] == pytest.approx(1.0)
        assert v[(p, "mse")] == pytest.approx(0.0, abs=1e-12)
        assert v[(p, "mae_top5")] == pytest.approx(0.0, abs=1e-12)
        assert v[(p, "discrimination")] == 1.0
        assert v[(p, "direction_match_top5")] == 1.0
    for p in ["A", "B", "C"]:
        assert v[(p, "pearson_delta_top5")] == pytest.approx(1.0)
        # |Δ̂| ranking vs |t| ranking of the observed DE genes: high but not always 1
        assert v[(p, "de_overlap_top5")] >= 0.4
    assert np.isnan(v[("N", "de_overlap_top5")])
    # the no-change prediction ranks genes arbitrarily: lower overlap than the perfect one
    ctrl = observed_means(adata, [CTRL]).iloc[0].to_numpy()
    flat = pd.DataFrame(np.tile(ctrl, (4, 1)), index=PERTS, columns=adata.var_names)
    df_flat = pm.compare({"flat": flat}, adata, KEY, CTRL, n_top_de=5)
    ov_flat = df_flat[df_flat.metric == "de_overlap_top5"]["value"].mean()
    assert ov_flat < np.nanmean([v[(p, "de_overlap_top5")] for p in PERTS])
    strong = df.drop_duplicates("perturbation").set_index("perturbation")["strong_effect"]
    assert strong["A"] and strong["C"] and not strong["N"]


def test_compare_single_cell_perturbation_ranks_by_delta():
    adata = make_screen()
    lab = adata.obs[KEY].to_numpy()
    keep = (lab != "A") | (np.cumsum(lab == "A") == 1)
    sub = adata[keep].copy()
    perfect = observed_means(sub, PERTS)
    df = pm.compare({"perfect": perfect}, sub, KEY, CTRL, n_top_de=3)
    v = df.set_index(["perturbation", "metric"])["value"]
    assert df[df.perturbation == "A"]["n_cells"].iloc[0] == 1
    assert v[("A", "pearson_delta_top3")] == pytest.approx(1.0)
    assert v[("A", "direction_match_top3")] == 1.0
    assert not df[df.perturbation == "A"]["strong_effect"].iloc[0]  # too few cells to split


def test_compare_swapped_predictions_discriminate_badly():
    adata = make_screen()
    perfect = observed_means(adata, PERTS)
    swapped = perfect.rename(index={"A": "B", "B": "A"})
    df = pm.compare({"swapped": swapped}, adata, KEY, CTRL)
    disc = df[df.metric == "discrimination"].set_index("perturbation")["value"]
    chance = pm.discrimination_chance(len(PERTS))
    assert disc["A"] < chance and disc["B"] < chance
    assert disc.mean() < 1.0
    # with only two perturbations a swap is the worst ranking: 1 - 1/2
    two = make_screen(effects={"A": EFFECTS["A"], "B": EFFECTS["B"]})
    sw2 = observed_means(two, ["A", "B"]).rename(index={"A": "B", "B": "A"})
    df2 = pm.compare({"swapped": sw2}, two, KEY, CTRL)
    assert df2[df2.metric == "discrimination"]["value"].max() == 0.5


def test_compare_constant_delta_has_pearson_zero():
    adata = make_screen()
    ctrl = observed_means(adata, [CTRL]).iloc[0].to_numpy()
    no_change = pd.DataFrame(np.tile(ctrl, (4, 1)), index=PERTS, columns=adata.var_names)
    train_mean = observed_means(adata, PERTS).mean(axis=0)
    tm_pred = pd.DataFrame(np.tile(train_mean, (4, 1)), index=PERTS, columns=adata.var_names)
    df = pm.compare(
        {"no_change": no_change, "train_mean": tm_pred},
        adata,
        KEY,
        CTRL,
        train_mean=train_mean,
    )
    assert not df["value"].drop(df.index[df.metric.str.startswith("de_overlap")]).isna().any()
    nc = df[df.method == "no_change"].set_index(["perturbation", "metric"])["value"]
    for p in PERTS:
        assert nc[(p, "pearson_delta")] == 0.0
        assert nc[(p, "pearson_delta_top20")] == 0.0
        assert nc[(p, "direction_match_top20")] == 0.0
    tm = df[(df.method == "train_mean") & df.metric.str.startswith("pearson_delta_pert")]
    assert (tm["value"] == 0.0).all()


def test_compare_metrics_match_reference_computation():
    """compare() = metric functions on independently computed Δ and DE genes."""
    adata = make_screen(as_sparse=False)
    rng = np.random.default_rng(5)
    obs = observed_means(adata, PERTS)
    ctrl = observed_means(adata, [CTRL]).iloc[0]
    pred = obs + rng.normal(0, 0.3, size=obs.shape)
    n_top = 6
    df = pm.compare({"m": pred}, adata, KEY, CTRL, n_top_de=n_top, train_mean=ctrl * 0.9)
    v = df.set_index(["perturbation", "metric"])["value"]
    X = pm.log_normalize(adata)
    lab = adata.obs[KEY].astype(str).to_numpy()
    d_obs = (obs - ctrl).to_numpy()
    d_hat = (pred - ctrl).to_numpy()
    disc = pm.discrimination_score(d_hat, d_obs)
    for i, p in enumerate(PERTS):
        tt = stats.ttest_ind(X[lab == p], X[lab == CTRL], equal_var=False)
        top = np.argsort(-np.abs(tt.statistic), kind="stable")[:n_top]
        q = stats.false_discovery_control(tt.pvalue)
        sig = np.flatnonzero(q < 0.05)
        sig = sig[np.argsort(-np.abs(tt.statistic[sig]), kind="stable")][:n_top]
        assert v[(p, "pearson_delta")] == pytest.approx(pm.pearson(d_hat[i], d_obs[i]))
        assert v[(p, f"pearson_delta_top{n_top}")] == pytest.approx(
            pm.pearson(d_hat[i, top], d_obs[i, top])
        )
        assert v[(p, "mse")] == pytest.approx(pm.mse(pred.iloc[i], obs.iloc[i]))
        assert v[(p, f"mse_top{n_top}")] == pytest.approx(pm.mse(d_hat[i, top], d_obs[i, top]))
        assert v[(p, f"mae_top{n_top}")] == pytest.approx(pm.mae(d_hat[i, top], d_obs[i, top]))
        assert v[(p, f"direction_match_top{n_top}")] == pytest.approx(
            pm.direction_match(d_hat[i, top], d_obs[i, top])
        )
        assert v[(p, "discrimination")] == pytest.approx(disc[i])
        expected_overlap = pm.de_gene_overlap(d_hat[i], sig)
        got = v[(p, f"de_overlap_top{n_top}")]
        assert (np.isnan(got) and np.isnan(expected_overlap)) or got == pytest.approx(
            expected_overlap
        )
        m = (ctrl * 0.9).to_numpy()
        assert v[(p, "pearson_delta_pert")] == pytest.approx(
            pm.pearson(pred.iloc[i] - m, obs.iloc[i] - m)
        )
    # the null perturbation has no significant gene: overlap undefined
    assert np.isnan(v[("N", f"de_overlap_top{n_top}")])


def test_compare_de_method_abs_delta_and_top_genes():
    adata = make_screen()
    obs = observed_means(adata, PERTS)
    df = pm.compare({"m": obs}, adata, KEY, CTRL, n_top_de=3, de_method="abs_delta")
    assert "pearson_delta_top3" in set(df.metric)
    with pytest.raises(ValueError, match="de_method"):
        pm.compare({"m": obs}, adata, KEY, CTRL, de_method="wilcoxon")  # type: ignore[arg-type]


def test_split_control_removes_shared_noise():
    """Trap (a): a no-change model fitted on other controls correlates through shared noise."""
    adata = make_screen(effects={f"N{i}": {} for i in range(6)}, n_ctrl=200, n_per=100)
    fit, ev = pm.split_control(adata, KEY, CTRL, seed=0)
    c_fit = observed_means(adata[fit], [CTRL]).iloc[0].to_numpy()
    perts = [f"N{i}" for i in range(6)]
    pred = pd.DataFrame(np.tile(c_fit, (6, 1)), index=perts, columns=adata.var_names)
    shared = pm.compare({"no_change": pred}, adata, KEY, CTRL, control_mask=ev)
    split = pm.compare(
        {"no_change": pred}, adata, KEY, CTRL, control_mask=ev, pred_control_mask=fit
    )
    r_shared = shared[shared.metric == "pearson_delta"]["value"]
    r_split = split[split.metric == "pearson_delta"]["value"]
    assert r_shared.mean() > 0.3
    assert (r_split == 0.0).all()
    assert not split["strong_effect"].any()


def test_compare_combination_labels_and_baseline_objects():
    effects = {"A": {0: 1.0}, "B": {1: 1.0}, "A+B": {0: 1.0, 1: 1.0}}
    adata = make_screen(effects=effects)
    obs = observed_means(adata, ["A", "B", "A+B"]).rename(index={"A+B": "B+A", "A": "A+ctrl"})
    df = pm.compare({"m": obs}, adata, KEY, CTRL)
    assert set(df.perturbation) == {"A", "B", "A+B"}
    pd_ = df[df.metric == "pearson_delta"].set_index("perturbation")["value"]
    assert pd_["A+B"] == pytest.approx(1.0)
    bl = pm.ControlMean().fit(adata, KEY, CTRL)
    df2 = pm.compare({"control_mean": bl}, adata, KEY, CTRL)
    assert (df2[df2.metric == "pearson_delta"]["value"] == 0.0).all()


def test_compare_bad_input_messages():
    adata = make_screen()
    obs = observed_means(adata, PERTS)
    with pytest.raises(ValueError, match="control_group 'control'"):
        pm.compare({"m": obs}, adata, KEY, "control")
    with pytest.raises(ValueError, match="'condition'"):
        pm.compare({"m": obs}, adata, "condition", CTRL)
    with pytest.raises(ValueError, match="'Z'"):
        pm.compare({"m": obs}, adata, KEY, CTRL, perturbations=["A", "Z"])
    with pytest.raises(ValueError, match="missing.*g3"):
        pm.compare({"m": obs.drop(columns="g3")}, adata, KEY, CTRL)
    with pytest.raises(ValueError, match="not in the data.*extra"):
        pm.compare({"m": obs.assign(extra=0.0)}, adata, KEY, CTRL)
    with pytest.raises(ValueError, match=r"'m' has no row for perturbation\(s\) \['C'\]"):
        pm.compare({"m": obs.drop(index="C")}, adata, KEY, CTRL)
    with pytest.raises(ValueError, match="not control_group"):
        pm.compare({"m": obs}, adata, KEY, CTRL, control_mask=np.ones(adata.n_obs, bool))
    with pytest.raises(ValueError, match="one entry per cell"):
        pm.compare({"m": obs}, adata, KEY, CTRL, control_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="train_mean"):
        pm.compare({"m": obs}, adata, KEY, CTRL, train_mean=np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        pm.compare({"m": obs.assign(g0=np.nan)}, adata, KEY, CTRL)


def test_compare_accepts_series_mask_and_leaves_adata_unchanged():
    adata = make_screen()
    before = adata.X.copy()
    obs_before = adata.obs.copy()
    fit, ev = pm.split_control(adata, KEY, CTRL)
    sub = adata[::2].copy()
    mask = pd.Series(ev, index=adata.obs_names).reindex(sub.obs_names)
    df = pm.compare({"m": observed_means(adata, PERTS)}, sub, KEY, CTRL, control_mask=mask)
    assert len(df) == 4 * len(pm.metric_names(20, with_train_mean=False))
    assert (adata.X != before).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, obs_before)


# ---------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------


def test_summarize_hand_computed():
    df = pd.DataFrame(
        {
            "method": ["a"] * 4 + ["b"] * 4,
            "perturbation": ["p1", "p2", "p3", "p4"] * 2,
            "metric": "pearson_delta",
            "value": [1.0, 1.0, 1.0, np.nan, 0.0, 1.0, 0.0, 1.0],
            "strong_effect": [True, True, False, False] * 2,
        }
    )
    s = pm.summarize(df, n_boot=500, seed=1)
    assert list(s.columns) == ["method", "metric", "n", "mean", "ci_low", "ci_high"]
    a = s[s.method == "a"].iloc[0]
    assert a["n"] == 3 and a["mean"] == 1.0 and a["ci_low"] == 1.0 and a["ci_high"] == 1.0
    b = s[s.method == "b"].iloc[0]
    assert b["mean"] == 0.5 and 0.0 <= b["ci_low"] < 0.5 < b["ci_high"] <= 1.0
    g = pm.summarize(df, n_boot=200, by_strong_effect=True)
    assert len(g) == 4 and "strong_effect" in g.columns
    bt = g[(g.method == "b") & g.strong_effect].iloc[0]
    assert bt["mean"] == 0.5 and bt["n"] == 2
    none = pm.summarize(df, n_boot=0)
    assert none["ci_low"].isna().all()
    with pytest.raises(ValueError, match="value"):
        pm.summarize(df.drop(columns="value"))


def test_summarize_compare_output():
    adata = make_screen()
    obs = observed_means(adata, PERTS)
    df = pm.compare({"perfect": obs, "noisy": obs + 0.1}, adata, KEY, CTRL)
    s = pm.summarize(df, n_boot=100)
    assert len(s) == 2 * df.metric.nunique()
    ok = s.dropna(subset=["mean"])
    assert ((ok.ci_low <= ok["mean"] + 1e-12) & (ok["mean"] <= ok.ci_high + 1e-12)).all()


# ---------------------------------------------------------------------------------------------
# no torch
# ---------------------------------------------------------------------------------------------


def test_metrics_package_does_not_import_torch():
    root = Path(pm.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level and node.level > 1:  # nothing from the parent package
                    names.append("..")
            for n in names:
                assert n.split(".")[0] not in {"torch", "lightning", "scvi", ".."}, (path, n)


def test_vcc_score_is_the_share_of_the_replicate_gain():
    """s = (method - best baseline) / (replicate - best baseline), the best baseline chosen per
    metric in its direction; interval from resampling perturbations."""
    rng = np.random.default_rng(0)
    n = 40
    rows = []
    for p in range(n):
        values = {
            "PertTX": 0.5 + rng.normal(0, 0.05),
            "split_half": 0.9 + rng.normal(0, 0.05),
            "train_mean": 0.3 + rng.normal(0, 0.05),
            "additive": 0.1 + rng.normal(0, 0.05),
        }
        rows += [
            {"perturbation": f"P{p}", "method": m, "metric": "pearson_delta", "value": v}
            for m, v in values.items()
        ]
        rows += [
            {"perturbation": f"P{p}", "method": m, "metric": "mse_top20", "value": 1 - v}
            for m, v in values.items()
        ]
    df = pd.DataFrame(rows)
    scores = pm.vcc_scores(df, n_boot=200).set_index("metric")
    means = df.groupby(["metric", "method"])["value"].mean()
    for metric in ("pearson_delta", "mse_top20"):
        m = means[metric]
        row = scores.loc[metric]
        assert row.best_baseline == "train_mean"
        expected = (m["PertTX"] - m["train_mean"]) / (m["split_half"] - m["train_mean"])
        assert row.s == pytest.approx(expected)
        assert 0.25 < row.s < 0.5 and row.ci_low < row.s < row.ci_high
        assert row.verdict == "ahead"
    # No room: a replicate no better than the bar leaves s undefined.
    flat = df.assign(value=np.where(df.method == "split_half", df.value - 0.8, df.value)).query(
        "metric == 'pearson_delta'"
    )
    row = pm.vcc_scores(flat, n_boot=50).iloc[0]
    assert np.isnan(row.s) and row.verdict == "no room"
    with pytest.raises(ValueError, match="'split_half' is not in df"):
        pm.vcc_scores(df[df.method != "split_half"])
