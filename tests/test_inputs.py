"""Inputs are checked before anything changes, genes are matched by name, labels by gene set."""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from lightning.pytorch.callbacks import Callback

import pertx_scvi as px
from pertx_scvi import cli
from pertx_scvi._model import TrainingInterrupted

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
KEY = "perturbation"


@pytest.fixture(scope="module")
def screen(tiny_screen):
    """60 controls, REG00-REG05 (10 cells each) and two combinations, 40 genes (conftest)."""
    return tiny_screen


@pytest.fixture
def adata(screen):
    return screen.copy()


def _setup(adata, **kwargs):
    px.PertTX.setup_anndata(
        adata, **{"perturbation_key": KEY, "control_group": "control", **kwargs}
    )


def _relabel(adata, old, new, n):
    """Give ``n`` cells of label ``old`` the label ``new`` (another spelling)."""
    labels = adata.obs[KEY].astype(str).to_numpy().copy()
    labels[np.flatnonzero(labels == old)[:n]] = new
    adata.obs[KEY] = labels
    return labels


def _dense(matrix):
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _same(adata, before):
    """``adata`` is as ``before`` (a copy taken earlier): obs, var, uns keys, X and layers."""
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert list(adata.uns.keys()) == list(before.uns.keys())
    assert np.array_equal(_dense(adata.X), _dense(before.X), equal_nan=True)
    assert list(adata.layers.keys()) == list(before.layers.keys())


def _combination(adata):
    return next(label for label in adata.obs[KEY].astype(str).unique() if "+" in label)


@pytest.fixture(scope="module")
def trained(screen, tiny_model, train_model):
    """A tiny model (with a phenotype head) trained 2 epochs with one combination held out."""
    adata = screen.copy()
    _setup(adata, phenotype_keys=["phenotype"])
    model = train_model(
        adata, tiny_model, max_epochs=2, holdout_perturbations=[_combination(adata)], **QUIET
    )
    return model, adata


# ---- labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("blank", ["", "+", " + "])
def test_empty_label_is_an_error_naming_cells_and_column(adata, blank):
    _relabel(adata, "REG01", blank, 3)
    before = adata.copy()
    with pytest.raises(ValueError, match=r"3 cells of adata.obs\['perturbation'\] have an empty"):
        _setup(adata)
    _same(adata, before)


@pytest.mark.parametrize("variant", ["REG00 ", "REG00+", "+REG00", "REG00+ctrl", "ctrl+REG00"])
def test_spellings_of_one_gene_are_one_perturbation(adata, variant, tiny_model):
    labels = _relabel(adata, "REG00", variant, 4)
    with pytest.warns(UserWarning, match=re.escape(f"'REG00' = {variant!r}")):
        _setup(adata)
    model = px.PertTX(adata, **tiny_model)
    model.train(max_epochs=1, holdout_perturbations=["REG00"], **QUIET)
    held = np.flatnonzero(np.isin(labels, ["REG00", variant]))
    assert len(held) == 10
    np.testing.assert_array_equal(np.sort(model.test_indices), held)


def test_holding_out_a_plus_b_holds_out_b_plus_a(adata, tiny_model):
    combination = _combination(adata)
    a, b = combination.split("+")
    labels = _relabel(adata, combination, f"{b}+{a}", 4)
    with pytest.warns(UserWarning, match="spells 1 perturbation"):
        _setup(adata)
    model = px.PertTX(adata, **tiny_model)
    model.train(max_epochs=1, holdout_perturbations=[combination], **QUIET)
    held = np.flatnonzero(np.isin(labels, [combination, f"{b}+{a}"]))
    np.testing.assert_array_equal(np.sort(model.test_indices), held)
    # Evaluated under the name asked for, over the cells of both spellings.
    result = model.evaluate(perturbations=[f"{b}+{a}"], baselines=None)
    assert set(result["perturbation"]) == {f"{b}+{a}"}
    assert (result["n_cells"] == 10).all()


def test_case_variant_of_a_gene_is_refused(adata):
    _relabel(adata, "REG01", "reg01", 3)
    before = adata.copy()
    with pytest.raises(ValueError, match="'REG01'.*'reg01'|'reg01'.*'REG01'"):
        _setup(adata)
    _same(adata, before)


def test_case_variant_of_a_measured_gene_is_refused(adata):
    _relabel(adata, "REG03", "Reg03", 10)  # every REG03 cell: the label is only spelled so
    before = adata.copy()
    with pytest.raises(ValueError, match="'Reg03'.*measured gene is spelled 'REG03'"):
        _setup(adata)
    _same(adata, before)


def test_empty_label_at_prediction_is_an_error(trained):
    model, adata = trained
    controls = adata[adata.obs[KEY] == "control"]
    with pytest.raises(ValueError, match="empty perturbation label"):
        model.predict_perturbation(controls, ["+"])


# ---- degenerate data ----------------------------------------------------------------------------
def test_zero_genes_is_an_error(adata):
    empty = adata[:, []].copy()
    before = empty.copy()
    with pytest.raises(ValueError, match="no genes"):
        _setup(empty)
    _same(empty, before)


def _model_state(model):
    trained = model.module.perturbation_encoder.trained_genes.clone()
    return model.is_trained_, list(model.holdout_perturbations_), trained


def _unchanged_model(model, state):
    is_trained, holdout, trained = state
    assert model.is_trained_ == is_trained and model.holdout_perturbations_ == holdout
    assert bool((model.module.perturbation_encoder.trained_genes == trained).all())
    assert model.history_ is None


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one_cell", "adata has 1 cell"),
        ("one_control", "at least 2 control cells"),
        ("only_controls", "no perturbed cells to train on.*every cell is a control"),
        ("all_held_out", "no perturbed cells to train on.*held out"),
        ("zero_epochs", "max_epochs must be at least 1"),
    ],
)
def test_degenerate_training_data_is_a_clear_error(adata, case, message, tiny_model):
    labels = adata.obs[KEY].astype(str).to_numpy()
    controls, perturbed = np.flatnonzero(labels == "control"), np.flatnonzero(labels != "control")
    holdout = None
    if case == "one_cell":
        adata = adata[controls[:1]].copy()
    elif case == "one_control":
        adata = adata[np.r_[controls[:1], perturbed]].copy()
    elif case == "only_controls":
        adata = adata[controls].copy()
    elif case == "all_held_out":
        holdout = sorted(set(labels[perturbed]))
    _setup(adata)
    model = px.PertTX(adata, **tiny_model)
    state, before = _model_state(model), adata.copy()
    with pytest.raises(ValueError, match=message):
        model.train(
            max_epochs=0 if case == "zero_epochs" else 1, holdout_perturbations=holdout, **QUIET
        )
    _unchanged_model(model, state)
    _same(adata, before)


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN"), (-2.0, "negative")])
def test_bad_counts_fail_setup_without_changing_adata(adata, value, message):
    x = adata.X.toarray()
    x[3, 5] = value
    adata.X = sp.csr_matrix(x)
    before = adata.copy()
    with pytest.raises(ValueError, match=message):
        _setup(adata)
    _same(adata, before)


def test_non_integer_counts_fail_the_model_without_changing_adata(adata, tiny_model):
    adata.X = adata.X * 0.5
    _setup(adata)  # non-negative and finite: the likelihood decides
    before = adata.copy()
    for likelihood in ("nb", "zinb"):
        with pytest.raises(ValueError, match="non-integer values"):
            px.PertTX(adata, likelihood=likelihood, **tiny_model)
        _same(adata, before)
    px.PertTX(adata, likelihood="mse", **tiny_model)


# ---- genes matched by name ----------------------------------------------------------------------
def _with_extra_genes_shuffled(adata):
    """``adata`` with 3 more genes and all genes in another order (a new AnnData)."""
    rng = np.random.default_rng(0)
    extra = sp.csr_matrix(rng.poisson(2.0, (adata.n_obs, 3)).astype(np.float32))
    x = sp.hstack([adata.X, extra]).tocsr()
    var = pd.DataFrame(index=[*adata.var_names, "EXTRA1", "EXTRA2", "EXTRA3"])
    wider = ad.AnnData(x, obs=adata.obs[[KEY]].copy(), var=var)
    return wider[:, rng.permutation(wider.n_vars)].copy()


def test_predictions_match_genes_by_name(trained, caplog):
    model, adata = trained
    exact = ad.AnnData(adata.X.copy(), obs=adata.obs[[KEY]].copy(), var=adata.var[[]].copy())
    wider = _with_extra_genes_shuffled(adata)
    before = wider.copy()
    is_control = (exact.obs[KEY] == "control").to_numpy()
    labels = ["REG01", _combination(adata)]
    with caplog.at_level(logging.INFO, logger="pertx_scvi"):
        pred = model.predict_perturbation(wider[is_control], labels)
    assert "3 genes the model was not trained on" in caplog.text
    expected = model.predict_perturbation(exact[is_control], labels)
    assert list(pred.var_names) == list(adata.var_names)
    np.testing.assert_allclose(pred.X, expected.X, rtol=1e-5, atol=1e-6)
    profiles = model.predict_profiles(wider[is_control], labels)
    expected_profiles = model.predict_profiles(exact[is_control], labels)
    np.testing.assert_allclose(profiles.to_numpy(), expected_profiles.to_numpy())
    np.testing.assert_allclose(
        model.get_latent_representation(wider), model.get_latent_representation(exact), atol=1e-5
    )
    pd.testing.assert_frame_equal(
        model.predict_phenotype(wider, perturbations=labels),
        model.predict_phenotype(exact, perturbations=labels),
        atol=1e-5,
    )
    _same(wider, before)


def test_evaluate_matches_genes_by_name(trained):
    model, adata = trained
    exact = ad.AnnData(adata.X.copy(), obs=adata.obs[[KEY]].copy(), var=adata.var[[]].copy())
    wider = _with_extra_genes_shuffled(adata)
    kwargs = {"baselines": ["control_mean", "train_mean"]}
    got = model.evaluate(wider, **kwargs)
    expected = model.evaluate(exact, **kwargs)
    pd.testing.assert_frame_equal(got, expected)


def test_missing_genes_are_named(trained):
    model, adata = trained
    fewer = adata[:, 2:].copy()
    before = fewer.copy()
    with pytest.raises(ValueError, match=r"lacks 2 of the 40 genes.*REG00"):
        model.predict_perturbation(fewer, ["REG01"])
    with pytest.raises(ValueError, match="lacks 2 of the 40 genes"):
        model.evaluate(fewer, baselines=None)
    _same(fewer, before)


# ---- counts where counts are needed -------------------------------------------------------------
def test_log_normalised_input_is_refused(trained):
    model, adata = trained
    logged = adata.copy()
    logged.layers["counts"] = logged.X.copy()
    logged.X = px.metrics.log_normalize(logged)
    before = logged.copy()
    controls = logged[logged.obs[KEY] == "control"]
    for call in (
        lambda: model.predict_perturbation(controls, ["REG01"]),
        lambda: model.get_latent_representation(logged),
        lambda: model.evaluate(logged, baselines=None),
    ):
        with pytest.raises(ValueError, match=r"adata.X holds non-integer values \(e.g. \d"):
            call()
    _same(logged, before)
    negative = adata.copy()
    negative.X = adata.X.toarray() - 1.0
    with pytest.raises(ValueError, match="negative values"):
        model.get_latent_representation(negative)


# ---- perturbation names through the id table ----------------------------------------------------
def test_outdated_symbol_is_predicted_through_the_id_table(adata, tmp_path, tiny_model):
    edges = pd.DataFrame(
        {
            "source": ["REG00", "REG01", "MARCHF8", "MARCHF8", "REG02"],
            "target": ["REG01", "REG02", "REG01", "REG03", "REG04"],
        }
    )
    graph = px.GeneGraph(edges)
    ids = pd.DataFrame({"id": ["MARCH8"], "id_type": ["alias"], "symbol": ["MARCHF8"]})
    _setup(adata)
    controls = adata[adata.obs[KEY] == "control"][:10]
    plain = px.PertTX(adata, gene_graph=graph, **tiny_model)
    with pytest.raises(ValueError, match="in neither the gene graph"):
        plain.predict_perturbation(controls, ["MARCH8"])
    model = px.PertTX(adata, gene_graph=graph, id_table=ids, **tiny_model)
    model.train(max_epochs=1, **QUIET)
    pred = model.predict_perturbation(controls, ["MARCH8", "MARCH8+REG00"])
    assert list(pred.obs["perturbation"].cat.categories) == ["MARCH8", "MARCH8+REG00"]
    same = model.predict_perturbation(controls, ["MARCHF8", "MARCHF8+REG00"])
    np.testing.assert_allclose(pred.X, same.X)
    model.save(tmp_path / "model")
    loaded = px.PertTX.load(tmp_path / "model", adata)
    np.testing.assert_allclose(loaded.predict_perturbation(controls, ["MARCH8"]).X, same.X[:10])


# ---- interrupted training -----------------------------------------------------------------------
class _Interrupt(Callback):
    """At the start of the second epoch: Ctrl-C, or SIGTERM to this process."""

    def __init__(self, how):
        self.how = how

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        if self.how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        if self.how == "sigterm-cli":  # the pertx command's handler raises at once
            time.sleep(5)
            raise AssertionError("the SIGTERM handler did not raise")
        # without it, Lightning stops at the end of the next batch


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-cli", "sigterm"])
def test_interrupted_training_leaves_a_defined_model(adata, how, tiny_model):
    _setup(adata)
    model = px.PertTX(adata, **tiny_model)
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    previous = cli.install_sigterm_handler() if how == "sigterm-cli" else None
    try:
        with pytest.raises(TrainingInterrupted, match="after 1 of 20 epochs") as info:
            model.train(max_epochs=20, callbacks=[_Interrupt(how)], **QUIET)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    assert ("SIGTERM" in str(info.value)) == how.startswith("sigterm")
    assert isinstance(info.value, KeyboardInterrupt)
    assert not model.is_trained_
    assert len(model.history["train_loss"]) == 1
    assert len(model.train_indices) > 0
    assert signal.getsignal(signal.SIGINT) is sigint  # Lightning had set it to SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is sigterm
    with pytest.warns(UserWarning):  # usable, with the untrained-model warning
        model.get_latent_representation()


@pytest.mark.slow
def test_sigterm_stops_the_benchmark_command(tmp_path):
    """``pertx benchmark`` gets SIGTERM in its first fold: status 143 and what was kept."""
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "pertx_scvi.cli", "benchmark", "--quick", "--epochs", "500"]
    command += ["--out", str(out), "--no-plots", "--baselines", "control_mean"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    seen, stdout = [], []  # epoch lines go to stderr (no terminal: one line per epoch)
    drain = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
    drain.start()
    deadline = time.time() + 240
    for line in process.stderr:
        seen.append(line)
        if "epoch 1/" in line:
            process.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(seen)
    else:
        pytest.fail("the benchmark ended before its first epoch:\n" + "".join(seen + stdout))
    seen.extend(process.stderr)
    code = process.wait(timeout=120)
    drain.join(timeout=10)
    text = "".join(seen + stdout)
    assert code == 143, text
    assert "interrupted by SIGTERM" in text and "no fold had finished" in text, text
