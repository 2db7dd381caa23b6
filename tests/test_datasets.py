"""Tests of the data set loaders and the simulator."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertx_scvi import datasets
from pertx_scvi.datasets import find_data_file, norman2019_fixture, papalexi2021, simulate

PAPALEXI = "perturb/papalexi2021_thp1_subset.h5ad"
NORMAN = "perturb/norman2019_fixture_50x50.h5ad"


@pytest.fixture
def empty_places(tmp_path, monkeypatch) -> Path:
    """No $PERTX_DATA_DIR and an empty cache folder."""
    monkeypatch.delenv("PERTX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def sim():
    return simulate(seed=0)


def _log1p_norm(adata: ad.AnnData) -> np.ndarray:
    x = adata.X.toarray()
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def _observed_delta(adata: ad.AnnData) -> pd.DataFrame:
    means = (
        pd.DataFrame(_log1p_norm(adata), columns=adata.var_names)
        .groupby(adata.obs["perturbation"].to_numpy(), observed=True)
        .mean()
    )
    return means.drop("control") - means.loc["control"]


# ---- paths and real-data loaders ----------------------------------------------------------------


def test_public_api():
    assert set(datasets.__all__) >= {"papalexi2021", "norman2019_fixture", "simulate"}
    assert {"find_data_file", "data_dir"} <= set(datasets.__all__)


@pytest.mark.realdata
def test_papalexi_explicit_path(data_dir: Path):
    for path in (data_dir, data_dir / "perturb", data_dir / PAPALEXI, str(data_dir)):
        adata = papalexi2021(path)
        assert adata.shape == (20729, 299)
    assert isinstance(adata.obs["perturbation"].dtype, pd.CategoricalDtype)
    assert adata.obs["perturbation"].cat.categories[0] == "control"
    assert (adata.obs["perturbation"] == "control").sum() == 2386
    assert adata.obs["perturbation"].nunique() == 26
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    x = adata.X[:500].toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))


@pytest.mark.realdata
def test_papalexi_env_var(data_dir: Path, monkeypatch, empty_places):
    monkeypatch.setenv("PERTX_DATA_DIR", str(data_dir))
    assert datasets.data_dir() == data_dir
    assert find_data_file(PAPALEXI) == data_dir / PAPALEXI
    adata = papalexi2021()
    assert adata.n_obs == 20729


@pytest.mark.realdata
def test_cache_folder(data_dir: Path, empty_places):
    cached = empty_places / "cache" / "pertx_scvi" / NORMAN
    cached.parent.mkdir(parents=True)
    shutil.copy(data_dir / NORMAN, cached)
    assert datasets.data_dir() == empty_places / "cache" / "pertx_scvi"
    assert find_data_file(NORMAN) == cached
    assert norman2019_fixture().n_obs == 50


def test_missing_file_lists_places(empty_places, monkeypatch):
    env = empty_places / "nowhere"
    monkeypatch.setenv("PERTX_DATA_DIR", str(env))
    with pytest.raises(FileNotFoundError) as info:
        papalexi2021()
    msg = str(info.value)
    assert str(env / PAPALEXI) in msg
    assert str(empty_places / "cache" / "pertx_scvi" / PAPALEXI) in msg
    assert "PERTX_DATA_DIR" in msg

    with pytest.raises(FileNotFoundError) as info:
        papalexi2021(empty_places)
    assert str(empty_places / PAPALEXI) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        papalexi2021(empty_places / "missing.h5ad")


@pytest.mark.realdata
def test_norman_fixture(data_dir: Path):
    adata = norman2019_fixture(data_dir)
    assert adata.shape == (50, 50)
    assert "counts" in adata.layers
    assert adata.var_names[0].startswith("ENSG") and "feature_name" in adata.var
    assert adata.obs["perturbation"].cat.categories[0] == "control"
    cond = adata.obs["condition"].astype(str)
    pert = adata.obs["perturbation"].astype(str)
    assert (pert[cond == "ctrl"] == "control").all()
    assert not pert.str.contains("ctrl").any()
    doubles = cond[~cond.str.contains("ctrl")]
    assert (pert[doubles.index] == doubles).all()
    assert pert[cond == "MEIS1+ctrl"].eq("MEIS1").all()
    assert pert[cond == "ctrl+PTPN9"].eq("PTPN9").all()


# ---- simulator ---------------------------------------------------------------------------------


def test_simulate_shapes_and_labels(sim):
    adata, true_effects, network = sim
    n_reg, n_comb, n_cells = 40, 10, 60
    assert adata.n_vars == 200
    assert adata.n_obs == 600 + (n_reg + n_comb) * n_cells
    pert = adata.obs["perturbation"]
    assert isinstance(pert.dtype, pd.CategoricalDtype) and pert.cat.categories[0] == "control"
    counts = pert.value_counts()
    assert counts["control"] == 600 and (counts.drop("control") == n_cells).all()
    combos = [p for p in pert.cat.categories if "+" in p]
    assert len(combos) == n_comb and all(len(c.split("+")) == 2 for c in combos)
    assert {f"REG{i:02d}" for i in range(n_reg)} <= set(pert.cat.categories)
    assert list(true_effects.index) == list(pert.cat.categories[1:])
    assert list(true_effects.columns) == list(adata.var_names)
    assert list(network.columns) == ["source", "target", "weight"]
    assert network["source"].str.startswith("REG").all()
    assert (network["weight"] != 0).all()
    assert network["target"].str.startswith("REG").any()
    assert adata.var_names.str.match(r"^(REG\d{2}|GENE\d{3})$").all()
    assert [k for k in adata.layers if k is not None] == []  # anndata >= 0.13 lists X as None
    assert adata.obs["cell_type"].cat.categories.tolist() == ["type_0"]
    assert adata.obs["batch"].cat.categories.tolist() == ["batch_0"]
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 1000 <= lib.mean() <= 2000 and lib.std() > 100
    lfc = adata.uns["simulation"]["log_fold_change"]
    assert lfc.shape == true_effects.shape


def test_simulate_counts_are_integers(sim):
    adata = sim[0]
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert adata.X.dtype == np.float32
    data = adata.X.data
    assert (data >= 0).all() and np.array_equal(data, np.round(data))


def test_simulate_deterministic():
    a1, t1, n1 = simulate(n_genes=80, n_regulators=12, n_modules=3, seed=7)
    a2, t2, n2 = simulate(n_genes=80, n_regulators=12, n_modules=3, seed=7)
    a3, t3, _ = simulate(n_genes=80, n_regulators=12, n_modules=3, seed=8)
    assert (a1.X != a2.X).nnz == 0
    pd.testing.assert_frame_equal(a1.obs, a2.obs)
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(n1, n2)
    assert a1.X.shape == a3.X.shape and (a1.X != a3.X).nnz > 0
    assert not np.allclose(
        t1.loc[t1.index.intersection(t3.index)].values,
        t3.loc[t1.index.intersection(t3.index)].values,
    )


def test_self_effect_strongly_negative(sim):
    adata, true_effects, _ = sim
    regs = [r for r in adata.uns["simulation"]["regulators"] if r in adata.var_names]
    self_eff = np.array([true_effects.loc[r, r] for r in regs])
    assert (self_eff < -0.8).all()
    assert np.median(self_eff) < -1.4
    lfc = adata.uns["simulation"]["log_fold_change"]
    self_lfc = np.array([lfc.loc[r, r] for r in regs])
    assert ((self_lfc <= -1.5) & (self_lfc >= -2.5)).all()
    # some perturbations are weak: barely more than the target itself
    n_changed = (true_effects.abs() > 0.3).sum(axis=1)
    assert (n_changed[regs] <= 3).sum() >= 3


def test_module_effects_correlate(sim):
    adata, true_effects, _ = sim
    info = adata.uns["simulation"]
    regs, module = info["regulators"], info["regulator_module"]
    corr = np.corrcoef(true_effects.loc[regs].to_numpy())
    i, j = np.triu_indices(len(regs), 1)
    same = module[i] == module[j]
    assert corr[i, j][same].mean() > corr[i, j][~same].mean() + 0.2


def test_observed_delta_matches_truth(sim):
    adata, true_effects, _ = sim
    observed = _observed_delta(adata).loc[true_effects.index]
    strong = true_effects.index[(true_effects.abs() > 0.3).sum(axis=1) >= 10]
    assert len(strong) >= 20
    r = [np.corrcoef(observed.loc[p], true_effects.loc[p])[0, 1] for p in strong]
    assert min(r) > 0.8


def test_combinations_additive(sim):
    _, true_effects, _ = sim
    combos = [p for p in true_effects.index if "+" in p]
    for c in combos:
        a, b = c.split("+")
        additive = true_effects.loc[a] + true_effects.loc[b]
        assert np.corrcoef(additive, true_effects.loc[c])[0, 1] > 0.85
    # with no interaction the latent log-fold changes are exactly additive
    adata0, _, _ = simulate(interaction_scale=0.0, n_genes=80, n_regulators=12, n_modules=3)
    lfc = adata0.uns["simulation"]["log_fold_change"]
    for c in adata0.uns["simulation"]["combinations"]:
        a, b = c.split("+")
        sum_ab = (lfc.loc[a] + lfc.loc[b]).clip(-6.0, 2.5)
        np.testing.assert_allclose(lfc.loc[c], sum_ab, atol=1e-9)


def test_extra_labels():
    kw = dict(n_genes=80, n_regulators=12, n_modules=3, n_combinations=2, seed=1)
    a1, t1, _ = simulate(**kw)
    extra = ["REG00+REG05", "REG01+REG02+REG03", "GENE004"]
    a2, t2, _ = simulate(**kw, extra_labels=extra)
    assert (a1.X != a2.X).nnz == 0
    assert list(t2.index) == list(t1.index) + extra
    pd.testing.assert_frame_equal(t2.loc[t1.index], t1)
    assert t2.loc["GENE004", "GENE004"] < -1.0
    assert (t2.loc["GENE004"].drop("GENE004").abs() < 0.1).all()
    with pytest.raises(ValueError):
        simulate(**kw, extra_labels=["REG00+NOTAGENE"])


def test_phenotype_learnable(sim):
    adata = sim[0]
    ph, clean = adata.obs["phenotype"].to_numpy(), adata.obs["phenotype_noiseless"].to_numpy()
    assert 0.8 < np.corrcoef(ph, clean)[0, 1] < 0.97
    assert len(adata.uns["simulation"]["phenotype_genes"]) == 5
    # a ridge regression on the expression profile predicts held-out phenotypes
    x = _log1p_norm(adata)
    x = x - x.mean(axis=0)
    n = adata.n_obs // 2
    w = np.linalg.solve(
        x[:n].T @ x[:n] + 10.0 * np.eye(x.shape[1]), x[:n].T @ (ph[:n] - ph[:n].mean())
    )
    assert np.corrcoef(x[n:] @ w, ph[n:])[0, 1] > 0.5


def test_cell_types_differ():
    adata, true_effects, _ = simulate(
        n_cell_types=3, n_batches=2, cell_type_effect_scale=[1.0, 0.5, 1.5], seed=2
    )
    assert adata.obs["cell_type"].cat.categories.tolist() == ["type_0", "type_1", "type_2"]
    assert adata.obs["batch"].nunique() == 2
    # nearest-centroid classifier on held-out cells
    x = _log1p_norm(adata)
    t = adata.obs["cell_type"].cat.codes.to_numpy()
    n = adata.n_obs // 2
    centroids = np.stack([x[:n][t[:n] == k].mean(axis=0) for k in range(3)])
    pred = np.argmin(((x[n:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert (pred == t[n:]).mean() > 0.95
    # effects are shared (scaled) across cell types
    delta = {}
    for k in range(3):
        sub = adata[adata.obs["cell_type"] == f"type_{k}"]
        delta[k] = _observed_delta(sub)
    strong = true_effects.index[(true_effects.abs() > 0.3).sum(axis=1) >= 15][:10]
    for p in strong:
        assert np.corrcoef(delta[0].loc[p], delta[2].loc[p])[0, 1] > 0.6
        assert delta[2].loc[p].abs().sum() > delta[1].loc[p].abs().sum()


def test_unmeasured_regulators():
    adata, true_effects, network = simulate(n_unmeasured_regulators=5, seed=3)
    info = adata.uns["simulation"]
    unmeasured = list(info["unmeasured_regulators"])
    assert len(unmeasured) == 5
    assert adata.n_vars == 200
    assert not set(unmeasured) & set(adata.var_names)
    assert set(unmeasured) <= set(adata.obs["perturbation"].cat.categories)
    assert set(unmeasured) <= set(network["source"])
    assert set(unmeasured) <= set(true_effects.index)
    n_changed = (true_effects.loc[unmeasured].abs() > 0.3).sum(axis=1)
    assert n_changed.max() >= 5


def test_h5ad_roundtrip(sim, tmp_path):
    adata = sim[0]
    adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert back.shape == adata.shape
    assert back.uns["simulation"]["params"]["seed"] == 0


def test_simulate_fast():
    import time

    start = time.perf_counter()
    simulate()
    assert time.perf_counter() - start < 2.0
