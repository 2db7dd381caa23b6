"""Cell contexts: controls of each context, per-context evaluation, other_contexts_mean and
the context-transfer folds and benchmark (pertx_scvi.metrics._heldout,
pertx_scvi.benchmark._contexts)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pertx_scvi.metrics as pm
from pertx_scvi.benchmark import context_folds, context_transfer
from pertx_scvi.metrics._heldout import context_pairs, other_contexts_mean

KEY, CTRL, CTX = "perturbation", "control", "cell_type"
N_GENES = 30


def context_screen(seed: int = 0, noise: float = 0.05) -> tuple[ad.AnnData, dict, dict]:
    """Log-normalised cells in contexts A, B, C whose control levels differ a lot.

    Controls of context k are ``base_k`` plus small noise; perturbation p in context k is
    ``base_k + effect_p,k``. Returns the AnnData, ``base`` and ``effect`` (name -> vector).
    """
    rng = np.random.default_rng(seed)
    shifts = {"A": 0.0, "B": 2.0, "C": 8.0}  # the pooled control mean fits none of them
    base = {c: rng.uniform(0.5, 1.0, N_GENES) + shift for c, shift in shifts.items()}
    effect = {}
    for i, p in enumerate(["P1", "P2", "P3", "P4"]):
        for c in "ABC":
            e = np.zeros(N_GENES)
            e[3 * i : 3 * i + 4] = rng.normal(0, 1.5, 4)
            effect[p, c] = e
    blocks, labels, contexts = [], [], []
    for c in "ABC":
        for p, n in [(CTRL, 40), ("P1", 12), ("P2", 12), ("P3", 12), ("P4", 12)]:
            mean = base[c] + (effect[p, c] if p != CTRL else 0.0)
            blocks.append(mean + rng.normal(0, noise, (n, N_GENES)))
            labels += [p] * n
            contexts += [c] * n
    obs = pd.DataFrame(
        {KEY: pd.Categorical(labels), CTX: pd.Categorical(contexts)},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
    adata = ad.AnnData(X=np.vstack(blocks).astype(np.float32), obs=obs, var=var)
    adata.uns["log1p"] = {"base": None}
    return adata, base, effect


def mean_of(adata: ad.AnnData, mask: np.ndarray) -> np.ndarray:
    return np.asarray(adata.X[mask], dtype=np.float64).mean(axis=0)


# --------------------------------------------------------------------------------------------
# control masks
# --------------------------------------------------------------------------------------------


def test_control_masks_split_within_every_context():
    adata, _, _ = context_screen()
    labels = adata.obs[KEY].astype(str).to_numpy()
    contexts = adata.obs[CTX].astype(str).to_numpy()
    fit, ref = pm.control_masks(adata, KEY, CTRL, context=CTX, seed=3)
    assert not (fit & ref).any()
    assert ((fit | ref) == (labels == CTRL)).all()
    for c in "ABC":
        assert (fit & (contexts == c)).sum() == 20
        assert (ref & (contexts == c)).sum() == 20
    # labels per cell work like the column name
    again = pm.control_masks(adata, KEY, CTRL, context=contexts, seed=3)
    assert (again[0] == fit).all() and (again[1] == ref).all()


def test_control_masks_without_context_unchanged():
    adata, _, _ = context_screen()
    fit, ref = pm.control_masks(adata, KEY, CTRL, seed=1)
    expected = pm.split_control(adata, KEY, CTRL, seed=1)
    assert (fit == expected[0]).all() and (ref == expected[1]).all()


def test_control_masks_trained_controls_need_every_context():
    adata, _, _ = context_screen()
    labels = adata.obs[KEY].astype(str).to_numpy()
    contexts = adata.obs[CTX].astype(str).to_numpy()
    is_control = labels == CTRL
    trained = is_control & (np.arange(adata.n_obs) % 2 == 0)
    fit, ref = pm.control_masks(adata, KEY, CTRL, trained_controls=trained, context=CTX)
    assert (fit == trained).all() and (ref == (is_control & ~trained)).all()
    # context C keeps no reference control: the per-context split applies instead
    trained_all_c = trained | (is_control & (contexts == "C"))
    fit, ref = pm.control_masks(adata, KEY, CTRL, trained_controls=trained_all_c, context=CTX)
    assert (ref & (contexts == "C")).sum() == 20


# --------------------------------------------------------------------------------------------
# per-context evaluation
# --------------------------------------------------------------------------------------------


def test_effects_against_own_context_controls():
    """Observed and predicted Δ subtract the controls of the pair's own context; pooled
    controls (the behaviour without context_key) would add the context's baseline shift."""
    adata, base, effect = context_screen()
    labels = adata.obs[KEY].astype(str).to_numpy()
    contexts = adata.obs[CTX].astype(str).to_numpy()
    fit, ref = pm.control_masks(adata, KEY, CTRL, context=CTX, seed=0)
    held = [("A", "P1"), ("B", "P1"), ("C", "P2")]
    # the exact observed profile of each held-out pair
    rows = {(c, p): mean_of(adata, (contexts == c) & (labels == p)) for c, p in held}
    exact = pd.DataFrame(
        np.vstack(list(rows.values())),
        index=pd.MultiIndex.from_tuples(list(rows), names=["context", "perturbation"]),
        columns=adata.var_names,
    )
    result, deltas = pm.evaluate_heldout(
        {"exact": exact}, adata, KEY, CTRL, held, fit_controls=fit, reference_controls=ref,
        baselines=None, context_key=CTX, return_deltas=True,
    )  # fmt: skip
    assert set(result["context"]) == {"A", "B", "C"}
    for c, p in held:
        own = rows[c, p] - mean_of(adata, ref & (contexts == c))
        observed = deltas["observed"].loc[(c, p)].to_numpy()
        np.testing.assert_allclose(observed, own, atol=1e-5)
        np.testing.assert_allclose(observed, effect[p, c], atol=0.1)  # the planted effect
        pooled = rows[c, p] - mean_of(adata, ref)
        assert np.abs(pooled - effect[p, c]).max() > 1.0  # pooled controls: a wrong Δ
        predicted = deltas["exact"].loc[(c, p)].to_numpy()
        np.testing.assert_allclose(predicted, rows[c, p] - mean_of(adata, fit & (contexts == c)))
    pearson = result[(result["metric"] == "pearson_delta")].set_index(["context", "perturbation"])
    assert (pearson["value"] > 0.99).all()


def test_context_baselines_fitted_per_context():
    adata, _, _ = context_screen()
    labels = adata.obs[KEY].astype(str).to_numpy()
    contexts = adata.obs[CTX].astype(str).to_numpy()
    fit, ref = pm.control_masks(adata, KEY, CTRL, context=CTX, seed=0)
    held = [("A", "P1"), ("B", "P2"), ("C", "P3")]
    result, deltas = pm.evaluate_heldout(
        {}, adata, KEY, CTRL, held, fit_controls=fit, reference_controls=ref,
        baselines=["control_mean", "train_mean", "other_contexts_mean"], context_key=CTX,
        return_deltas=True,
    )  # fmt: skip
    assert list(pd.unique(result["method"])) == [
        "control_mean",
        "train_mean",
        "other_contexts_mean",
    ]
    for c, p in held:
        control = mean_of(adata, fit & (contexts == c))
        trained = [q for q in ["P1", "P2", "P3", "P4"] if q != p]
        train_mean = np.mean(
            [mean_of(adata, (contexts == c) & (labels == q)) - control for q in trained], axis=0
        )
        np.testing.assert_allclose(deltas["train_mean"].loc[(c, p)], train_mean, atol=1e-5)
        np.testing.assert_allclose(deltas["control_mean"].loc[(c, p)], 0.0, atol=1e-6)


def test_context_errors():
    adata, _, _ = context_screen()
    fit, ref = pm.control_masks(adata, KEY, CTRL, context=CTX)
    plain = pd.DataFrame(np.zeros((1, N_GENES)), index=["P1"], columns=adata.var_names)
    with pytest.raises(ValueError, match="two-level MultiIndex"):
        pm.evaluate_heldout(
            {"x": plain}, adata, KEY, CTRL, ["P1"], fit_controls=fit, reference_controls=ref,
            baselines=None, context_key=CTX,
        )  # fmt: skip
    with pytest.raises(ValueError, match="need context_key"):
        pm.evaluate_heldout(
            {}, adata, KEY, CTRL, ["P1"], fit_controls=fit, reference_controls=ref,
            baselines=["other_contexts_mean"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="no cells"):
        context_pairs(adata, KEY, CTRL, CTX, [("A", "P9")])
    assert context_pairs(adata, KEY, CTRL, CTX, ["P1"]) == [("A", "P1"), ("B", "P1"), ("C", "P1")]


# --------------------------------------------------------------------------------------------
# other_contexts_mean
# --------------------------------------------------------------------------------------------


def test_other_contexts_mean_exact():
    """x̂(p, c) = c̄_c + mean over the other contexts k of (x̄_{p,k} - c̄_k), by hand."""
    genes = ["g0", "g1", "g2"]
    cells = [
        # context, label, values
        ("A", CTRL, [1.0, 2.0, 3.0]),
        ("A", CTRL, [3.0, 2.0, 1.0]),  # c̄_A = (2, 2, 2)
        ("A", "Q", [9.0, 9.0, 9.0]),  # Q only in A
        ("B", CTRL, [10.0, 10.0, 10.0]),  # c̄_B = (10, 10, 10)
        ("B", "P", [11.0, 12.0, 10.0]),
        ("B", "P", [13.0, 12.0, 10.0]),  # x̄_{P,B} = (12, 12, 10): effect (2, 2, 0)
        ("C", CTRL, [0.0, 0.0, 0.0]),
        ("C", CTRL, [0.0, 0.0, 2.0]),  # c̄_C = (0, 0, 1)
        ("C", "P", [0.0, 4.0, 0.0]),  # x̄_{P,C} = (0, 4, 0): effect (0, 4, -1)
    ]
    obs = pd.DataFrame(
        {CTX: [c for c, _, _ in cells], KEY: [p for _, p, _ in cells]},
        index=[f"c{i}" for i in range(len(cells))],
    )
    adata = ad.AnnData(
        X=np.array([v for *_, v in cells], dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=genes),
    )
    adata.uns["log1p"] = {"base": None}
    pred = other_contexts_mean(adata, KEY, CTRL, CTX, [("A", "P"), ("B", "P"), ("B", "Q")])
    # (A, P): c̄_A + mean((2, 2, 0), (0, 4, -1)) = (2, 2, 2) + (1, 3, -0.5)
    np.testing.assert_allclose(pred.loc[("A", "P")], [3.0, 5.0, 1.5])
    # (B, P): only C is another context with P: c̄_B + (0, 4, -1)
    np.testing.assert_allclose(pred.loc[("B", "P")], [10.0, 14.0, 9.0])
    # (B, Q): Q's only other context is A: c̄_B + (7, 7, 7)
    np.testing.assert_allclose(pred.loc[("B", "Q")], [17.0, 17.0, 17.0])
    assert list(pred.index.names) == ["context", "perturbation"]
    # a perturbation measured in no other context gets no row
    none = other_contexts_mean(adata, KEY, CTRL, CTX, [("A", "Q")])
    assert len(none) == 0 and list(none.columns) == genes


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------


def test_context_folds_hold_every_pair_out_once():
    perturbations = [f"P{i}" for i in range(9)]
    contexts = ["T98G", "U87MG", "A172"]
    pairs = [(c, p) for c in contexts for p in perturbations if (c, p) != ("A172", "P4")]
    folds = context_folds(pairs, n_folds=3, seed=0)
    assert len(folds) == 3
    held = [pair for fold in folds for pair in fold]
    assert sorted(held) == sorted(pairs)  # every pair exactly once
    for fold in folds:
        assert {c for c, _ in fold} == set(contexts)
        training = set(pairs) - set(fold)
        for c, p in fold:
            assert any(p == q and c != k for k, q in training)  # measured in another context
    assert folds == context_folds(list(reversed(pairs)), n_folds=3, seed=0)
    assert folds != context_folds(pairs, n_folds=3, seed=1)
    # two folds over three contexts still leave each perturbation measured somewhere
    for fold in context_folds(pairs, n_folds=2, seed=0):
        training = set(pairs) - set(fold)
        assert all(any(p == q for _, q in training) for _, p in fold)
    with pytest.raises(ValueError, match="n_folds"):
        context_folds(pairs, n_folds=1)
    with pytest.raises(ValueError, match="two contexts"):
        context_folds([("A", p) for p in perturbations])


# --------------------------------------------------------------------------------------------
# the benchmark end to end (tiny model, one epoch)
# --------------------------------------------------------------------------------------------


def test_context_transfer_end_to_end(simulated_cell_types, tiny_model, tmp_path):
    adata = simulated_cell_types[0]
    keep = adata.obs[KEY].astype(str).isin([CTRL, "REG00", "REG01", "REG02", "REG03"])
    adata = adata[keep.to_numpy()].copy()
    result = context_transfer(
        adata, KEY, CTRL, CTX, n_folds=2, seed=0, model_kwargs=tiny_model,
        train_kwargs={"max_epochs": 1}, out=tmp_path, n_boot=100, progress=False,
    )  # fmt: skip
    for name in ("metrics.csv", "summary.md", "paired.csv", "summary.csv", "folds.csv"):
        assert (tmp_path / name).is_file()
    df = result.metrics
    labels = adata.obs[KEY].astype(str).to_numpy()
    contexts = adata.obs[CTX].astype(str).to_numpy()
    n_pairs = len(set(zip(contexts[labels != CTRL], labels[labels != CTRL], strict=True)))
    pertx = df[(df["method"] == "PertTX") & (df["metric"] == "pearson_delta")]
    assert len(pertx) == n_pairs and pertx["value"].notna().all()
    assert not pertx.duplicated(["context", "perturbation"]).any()  # each pair held out once
    assert set(df["method"]) == {
        "PertTX", "control_mean", "train_mean", "train_mean_knockdown", "other_contexts_mean",
    }  # fmt: skip
    # training saw neither the held-out pairs nor the reference controls
    fit, ref = pm.control_masks(adata, KEY, CTRL, context=CTX, seed=0)
    pairs = pd.MultiIndex.from_arrays([contexts, labels])
    for row in result.folds.itertuples():
        held = [tuple(item.split("/")) for item in row.held_out.split("; ")]
        expected = int((~pairs.isin(held) & ~ref).sum())
        assert row.n_train_cells + row.n_validation_cells == expected
    scopes = set(result.paired["scope"])
    assert scopes == {"type_0", "type_1", "type_2", "all"}
    assert set(result.paired["method"]) == set(df["method"]) - {"PertTX"}
    disc = df[(df["metric"] == "discrimination") & df["method"].eq("other_contexts_mean")]
    assert disc["value"].between(0, 1).all()
    text = (tmp_path / "summary.md").read_text()
    assert "PertTX minus each baseline" in text and "other_contexts_mean" in text
