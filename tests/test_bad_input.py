"""Bad input gets a clear error naming the problem, and the user's AnnData is left as it was."""

import numpy as np
import pytest
import scipy.sparse as sp

import pertx_scvi as px


@pytest.fixture
def adata(tiny_screen):
    return tiny_screen.copy()


def _snapshot(adata):
    layers, uns = set(adata.layers.keys()), set(adata.uns.keys())
    return adata.X.copy(), adata.obs.copy(), adata.var.copy(), layers, uns


def _unchanged(adata, snapshot):
    x, obs, var, layers, uns = snapshot
    assert np.array_equal(adata.X.toarray(), x.toarray(), equal_nan=True)
    assert adata.obs.equals(obs)
    assert adata.var.equals(var)
    assert set(adata.layers.keys()) == layers
    assert set(adata.uns.keys()) == uns  # nothing registered (scvi-tools' ids in uns)


def _setup(adata, **kwargs):
    args = {"perturbation_key": "perturbation", "control_group": "control", **kwargs}
    px.PertTX.setup_anndata(adata, **args)


def test_missing_control_label(adata):
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="control_group 'NT'.*not found"):
        _setup(adata, control_group="NT")
    _unchanged(adata, before)


def test_missing_perturbation_column(adata):
    before = _snapshot(adata)
    with pytest.raises(KeyError, match="'guide'"):
        _setup(adata, perturbation_key="guide")
    _unchanged(adata, before)


def test_nan_in_perturbation_column(adata):
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs.iloc[3, adata.obs.columns.get_loc("perturbation")] = np.nan
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="'perturbation' has 1 missing"):
        _setup(adata)
    _unchanged(adata, before)


@pytest.mark.parametrize(
    ("value", "message"), [(-1.0, "negative values"), (np.nan, "NaN or infinite")]
)
def test_bad_count_values(adata, value, message):
    x = adata.X.toarray()
    x[0, 0] = value
    adata.X = sp.csr_matrix(x)
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=message):
        _setup(adata)
    _unchanged(adata, before)


def test_non_integer_counts_refused_by_count_likelihood_only(adata):
    adata.X = adata.X * 0.5
    _setup(adata)  # the likelihood, known at PertTX(), decides
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="non-integer.*likelihood='mse'"):
        px.PertTX(adata, d_model=16, n_heads=2, n_layers=1)
    _unchanged(adata, before)
    px.PertTX(adata, d_model=16, n_heads=2, n_layers=1, likelihood="mse")


def test_wrong_layer(adata):
    with pytest.raises(KeyError, match="layer 'counts' not found"):
        _setup(adata, layer="counts")


def test_duplicated_gene_names(adata):
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=f"duplicated gene names.*{names[0]}"):
        _setup(adata)
    _unchanged(adata, before)


def test_unknown_holdout_label(adata):
    _setup(adata)
    model = px.PertTX(adata, d_model=16, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="'NOPE'"):
        model.train(max_epochs=1, holdout_perturbations=["NOPE"])
    with pytest.raises(ValueError, match=r"\['\+'\] not found"):
        model.train(max_epochs=1, holdout_perturbations=["+"])
    with pytest.raises(ValueError, match="control label"):
        model.train(max_epochs=1, holdout_perturbations=["control"])
    with pytest.raises(ValueError, match="control label"):
        model.train(max_epochs=1, holdout_perturbations=["ctrl"])
    assert model.holdout_perturbations_ == [] and not model.is_trained_


def test_context_without_controls(adata):
    adata.obs["cell_type"] = "a"
    adata.obs.loc[adata.obs["perturbation"] != "control", "cell_type"] = "b"
    adata.obs.iloc[0, adata.obs.columns.get_loc("cell_type")] = "b"
    adata.obs.loc[adata.obs_names[0], "perturbation"] = "REG01"
    _setup(adata, cell_type_key="cell_type")
    model = px.PertTX(adata, d_model=16, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match=r"no control cells in context\(s\) \['b/"):
        model.train(max_epochs=1)


def test_gene_symbols_column_must_exist(adata):
    with pytest.raises(KeyError, match="gene_symbols column 'symbol'"):
        _setup(adata, gene_symbols="symbol")
