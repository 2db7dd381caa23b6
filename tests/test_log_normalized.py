"""Data that come without counts (log-normalised values only, as in GEARS and PerturBench files):
set up with ``is_log_normalized=True``, trained with ``likelihood="mse"``, predicted and
evaluated on the same scale; the count likelihoods refuse such data, naming the switch."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import pertx_scvi as px


def _log_normalized(adata: ad.AnnData) -> ad.AnnData:
    """A copy holding only log1p(normalize_total) values, with scanpy's ``uns["log1p"]``."""
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    out.layers.clear()
    return out


@pytest.fixture
def log_screen(tiny_screen):
    return _log_normalized(tiny_screen)


def test_train_predict_evaluate_on_log_normalized_values(log_screen, tiny_model):
    before = log_screen.X.copy()
    px.PertTX.setup_anndata(
        log_screen, perturbation_key="perturbation", control_group="control", is_log_normalized=True
    )
    model = px.PertTX(log_screen, **tiny_model)
    assert model.module.likelihood == "mse" and model.module.log_normalized_input
    model.train(max_epochs=8, holdout_perturbations=["REG01"], batch_size=32)
    controls = log_screen[log_screen.obs["perturbation"] == "control"]
    pred = model.predict_perturbation(controls, ["REG01", "REG00+REG01"])
    assert pred.shape == (2 * controls.n_obs, log_screen.n_vars)
    assert "counts" not in pred.layers and "log1p" in pred.uns
    # on the data's own scale: the held-out gene's mean prediction sits near its observed mean
    held = log_screen[log_screen.obs["perturbation"] == "REG01"]
    observed = np.asarray(held.X.mean(0)).ravel()
    predicted = np.asarray(pred[pred.obs["perturbation"] == "REG01"].X.mean(0)).ravel()
    assert np.corrcoef(observed, predicted)[0, 1] > 0.7
    assert predicted.max() < 2 * observed.max()

    result = model.evaluate(perturbations=["REG01"], baselines=["train_mean"])
    assert {"PertTX", "train_mean"} <= set(result["method"])
    assert np.isfinite(result.loc[result["method"] == "PertTX", "value"]).any()
    with pytest.raises(ValueError, match="profile='expected'"):
        model.predict_profiles(controls, ["REG01"], profile="sampled")
    assert (log_screen.X != before).nnz == 0


def test_metrics_read_log_normalized_x_as_it_is(log_screen):
    values = px.metrics.log_normalize(log_screen)
    np.testing.assert_allclose(values.toarray(), log_screen.X.toarray(), rtol=1e-6)
    assert values is not log_screen.X


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_likelihoods_refuse_log_normalized_setup(log_screen, tiny_model, likelihood):
    px.PertTX.setup_anndata(
        log_screen, perturbation_key="perturbation", control_group="control", is_log_normalized=True
    )
    with pytest.raises(ValueError, match="is_log_normalized=True.*likelihood='mse'"):
        px.PertTX(log_screen, likelihood=likelihood, **tiny_model)


def test_log_values_set_up_as_counts_name_the_switch(log_screen, tiny_model):
    px.PertTX.setup_anndata(log_screen, perturbation_key="perturbation", control_group="control")
    with pytest.raises(ValueError, match=r"non-integer.*is_log_normalized=True"):
        px.PertTX(log_screen, **tiny_model)


def test_counts_set_up_as_log_normalized_are_refused(tiny_screen):
    counts = tiny_screen.copy()
    counts.X[0, 0] = 500.0
    with pytest.raises(ValueError, match="not log-normalised.*is_log_normalized=False"):
        px.PertTX.setup_anndata(
            counts, perturbation_key="perturbation", control_group="control", is_log_normalized=True
        )
    assert "_scvi_manager_uuid" not in counts.uns


def test_gears_labels_on_a_log_normalized_file(data_dir, tiny_model):
    adata = ad.read_h5ad(data_dir / "perturb" / "norman2019_fixture_50x50.h5ad")
    adata.layers.clear()  # only the log-normalised X, as in PerturBench files
    px.PertTX.setup_anndata(
        adata,
        perturbation_key="condition",
        control_group="ctrl",
        gene_symbols="feature_name",
        is_log_normalized=True,
    )
    model = px.PertTX(adata, **tiny_model)
    model.train(max_epochs=1, validation_size=0.0, batch_size=16)
    doubles = [c for c in adata.obs["condition"].unique() if "ctrl" not in c.split("+")]
    pred = model.predict_perturbation(adata[adata.obs["condition"] == "ctrl"], doubles[:2])
    assert np.isfinite(pred.X).all()
