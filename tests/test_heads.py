"""Heads and extra losses: cell type, perturbation, phenotype, next-cell embedding, ZINB,
supervised contrastive and triplet terms."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import pertx_scvi as px
from pertx_scvi.module._losses import (
    classification_loss,
    regression_loss,
    supervised_contrastive_loss,
    triplet_loss,
)

# 25 epochs: at 12 the one-layer model had not yet separated the cell types on some seeds
# (accuracy 0.77-0.96); at 25 it was 0.98-1.0 over seeds 0-3.
EPOCHS = 25
HOLDOUT = "REG01"
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def simulated(simulated_cell_types):
    """The acceptance screen with 3 cell types (conftest)."""
    return simulated_cell_types


def _setup(adata, phenotype=True, cell_type=True):
    px.PertTX.setup_anndata(
        adata,
        perturbation_key="perturbation",
        control_group="control",
        cell_type_key="cell_type" if cell_type else None,
        phenotype_keys=["phenotype"] if phenotype else None,
    )


def _every_head(simulated, small_model, train_model, epochs):
    adata = simulated[0].copy()
    _setup(adata)
    heads = {
        "perturbation_weight": 1.0,
        "contrastive_weight": 0.1,
        "triplet_weight": 0.1,
        "contrastive_labels": "cell_type",
    }
    model = train_model(
        adata,
        small_model,
        heads,
        max_epochs=epochs,
        holdout_perturbations=[HOLDOUT],
        validation_size=0.1,
    )
    return model, adata


@pytest.fixture(scope="module")
def trained(simulated, small_model, train_model):
    """Every head and term on; trained on the noisy obs["phenotype"], REG01 held out.

    Contrastive and triplet terms use cell-type labels here: with perturbation labels they
    fall on some simulator seeds and not on others (most knockouts barely move a cell, so their
    labels cannot be told apart); test_zero_weight_removes_term_and_head trains them with
    perturbation labels.
    """
    return _every_head(simulated, small_model, train_model, EPOCHS)


@pytest.fixture(scope="module")
def trained_briefly(simulated, small_model, train_model):
    """The model of ``trained`` after 2 epochs: outputs and files, not quality."""
    return _every_head(simulated, small_model, train_model, 2)


def _unseen_cells(model):
    """Validation cells and the cells of the held-out perturbation: never trained on."""
    return np.sort(np.concatenate([model.validation_indices, model.test_indices]))


# ---- acceptance ---------------------------------------------------------------------------


def test_every_term_logged_per_epoch(trained_briefly):
    model, _ = trained_briefly
    terms = (
        "next_cell",
        "mlm",
        "reconstruction",
        "cell_type",
        "next_cell_type",
        "perturbation",
        "phenotype",
        "next_phenotype",
        "next_embedding",
        "contrastive",
        "triplet",
    )
    for term in terms:
        for mode in ("train", "validation"):
            key = f"{term}_{mode}"
            assert key in model.history, key
            assert len(model.history[key]) == 2, key


@pytest.mark.slow
@pytest.mark.parametrize("term", ["contrastive", "triplet", "cell_type", "phenotype"])
def test_head_terms_decrease(trained, term):
    series = trained[0].history[f"{term}_train"].iloc[:, 0].astype(float).to_numpy()
    assert series[-3:].mean() < series[:3].mean(), series


def _trivial_fits(model, adata):
    """Nearest-centroid cell types and ridge phenotype from log-normalised expression, fitted
    on the model's training cells and applied to the unseen ones: the bars of the heads."""
    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import NearestCentroid

    X = np.asarray(px.metrics.log_normalize(adata).todense())
    train, unseen = model.train_indices, _unseen_cells(model)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    centroid = NearestCentroid().fit(X[train], types[train]).predict(X[unseen])
    ridge = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(X[train], adata.obs["phenotype"].iloc[train])
    return (centroid == types[unseen]).mean(), ridge.predict(X[unseen])


@pytest.mark.slow
def test_cell_type_head_accuracy_against_nearest_centroid(trained):
    """Accuracy on cells never trained on (validation + held-out perturbation), against the
    nearest-centroid classifier on log-normalised expression fitted on the same training
    cells (margin: at most 0.02 below it)."""
    model, adata = trained
    unseen = adata[_unseen_cells(model)]
    latent = torch.from_numpy(model.get_latent_representation(unseen))
    with torch.inference_mode():
        probabilities = model.module.predict_heads(latent)["cell_type_probabilities"].numpy()
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    truth = unseen.obs["cell_type"].cat.codes.to_numpy()
    accuracy = (probabilities.argmax(1) == truth).mean()
    centroid_accuracy, _ = _trivial_fits(model, adata)
    print(f"cell type accuracy: PertTX {accuracy:.3f}, nearest centroid {centroid_accuracy:.3f}")
    assert accuracy >= centroid_accuracy - 0.02, (accuracy, centroid_accuracy)


@pytest.mark.slow
def test_predicted_cell_keeps_its_cell_type(trained):
    """The classifier on the predicted next-cell embedding: a knockout keeps the cell type."""
    model, adata = trained
    ctrl = adata[adata.obs["perturbation"] == "control"][:100]
    pred = model.predict_perturbation(ctrl, ["REG08", "REG02+REG04"], n_samples=2)
    assert list(pred.obs["predicted_cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    probabilities = pred.obsm["cell_type_probabilities"]
    assert probabilities.shape == (pred.n_obs, 3)
    assert list(probabilities.columns) == ["type_0", "type_1", "type_2"]
    accuracy = (pred.obs["predicted_cell_type"].astype(str) == pred.obs["cell_type"]).mean()
    assert accuracy > 0.9, accuracy
    assert "predicted_phenotype" in pred.obs and np.isfinite(pred.obs["predicted_phenotype"]).all()


def _phenotype_pearsons(model, adata) -> tuple[float, float]:
    """Pearson with obs["phenotype_noiseless"] on unseen cells: PertTX's head and ridge."""
    unseen = adata[_unseen_cells(model)]
    predicted = model.predict_phenotype(unseen)["phenotype"].to_numpy()
    truth = unseen.obs["phenotype_noiseless"]
    _, ridge = _trivial_fits(model, adata)
    pearson, ridge_pearson = np.corrcoef(predicted, truth)[0, 1], np.corrcoef(ridge, truth)[0, 1]
    print(f"phenotype Pearson: PertTX {pearson:.3f}, ridge {ridge_pearson:.3f}")
    return pearson, ridge_pearson


@pytest.mark.slow
def test_phenotype_head_against_ridge_regression(trained):
    """Pearson of predict_phenotype with obs["phenotype_noiseless"] on unseen cells, against
    ridge regression on log-normalised expression fitted on the same training cells.

    The model was trained on the noisy obs["phenotype"]; the noiseless score is what the cells'
    expression determines. Bar: at most 0.01 below ridge. Ridge itself passes this bar: the
    head ties ridge, it is not ahead of it (next test).
    """
    pearson, ridge_pearson = _phenotype_pearsons(*trained)
    assert pearson >= ridge_pearson - 0.01, (pearson, ridge_pearson)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,  # a 0.007 gap: other thread counts may round either way
    reason="measured 2026-11-30: PertTX's phenotype head 0.883-0.889 against ridge on "
    "log-normalised expression 0.890 (Pearson with the noiseless score, unseen cells)",
)
def test_phenotype_head_ahead_of_ridge_regression(trained):
    pearson, ridge_pearson = _phenotype_pearsons(*trained)
    assert pearson > ridge_pearson


def test_predict_phenotype_shapes(trained_briefly):
    model, adata = trained_briefly
    cells = adata[:25]
    current = model.predict_phenotype(cells)
    assert isinstance(current, pd.DataFrame)
    assert list(current.columns) == ["phenotype"]
    assert list(current.index) == list(cells.obs_names)
    after = model.predict_phenotype(cells, ["REG08", "REG02+REG04", "REG03+REG05+REG07"])
    assert list(after.columns) == ["perturbation", "source_cell", "phenotype"]
    assert len(after) == 3 * 25
    assert list(after["perturbation"].cat.categories) == [
        "REG08",
        "REG02+REG04",
        "REG03+REG05+REG07",
    ]
    assert (after["perturbation"].iloc[:25] == "REG08").all()
    assert list(after["source_cell"].iloc[:25]) == list(cells.obs_names)
    assert np.isfinite(after["phenotype"]).all()
    # predict_perturbation reports the same predicted phenotype.
    pred = model.predict_perturbation(cells, ["REG08"])
    np.testing.assert_allclose(
        pred.obs["predicted_phenotype"].to_numpy(),
        after["phenotype"].iloc[:25].to_numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow
def test_perturbation_moves_phenotype_like_observed(trained):
    """For the trained label with the strongest observed phenotype shift, predicting it on
    control cells shifts their predicted phenotype the same way, by at least half as much."""
    model, adata = trained
    obs = adata.obs
    shift = obs.groupby("perturbation", observed=True)["phenotype"].mean()
    shift = (shift - shift["control"]).drop(["control", HOLDOUT])
    strongest = shift.abs().idxmax()
    ctrl = adata[obs["perturbation"] == "control"]
    before = model.predict_phenotype(ctrl)["phenotype"].mean()
    after = model.predict_phenotype(ctrl, [strongest])["phenotype"].mean()
    observed = shift[strongest]
    assert np.sign(after - before) == np.sign(observed), (strongest, after - before, observed)
    assert abs(after - before) > 0.5 * abs(observed), (strongest, after - before, observed)


def test_save_load_keeps_heads_and_their_statistics(trained_briefly, tmp_path):
    """Phenotype centre / spread and the embedding statistics are saved with the model."""
    model, adata = trained_briefly
    cells = adata[:20]
    before = model.predict_phenotype(cells, ["REG08"])
    model.save(tmp_path / "heads", overwrite=True)
    # Loaded with scores of another scale: predictions keep the training scale.
    shifted = adata.copy()
    shifted.obs["phenotype"] = shifted.obs["phenotype"] * 10 + 100
    loaded = px.PertTX.load(tmp_path / "heads", adata=shifted)
    pd.testing.assert_frame_equal(before, loaded.predict_phenotype(cells, ["REG08"]))
    pred = loaded.predict_perturbation(cells, ["REG08"])
    np.testing.assert_allclose(
        pred.obs["predicted_phenotype"].to_numpy(), before["phenotype"].to_numpy(), rtol=1e-6
    )


# ---- weights, likelihoods, bad input ------------------------------------------------------


def test_zero_weight_removes_term_and_head(simulated, small_model):
    adata = simulated[0][:700].copy()
    _setup(adata)
    model = px.PertTX(
        adata,
        cell_type_weight=0.0,
        next_cell_type_weight=0.0,
        phenotype_weight=0.0,
        next_phenotype_weight=1.0,
        next_embedding_weight=0.0,
        contrastive_weight=0.5,
        triplet_weight=0.0,
        **small_model,
    )
    module = model.module
    assert module.cell_type_head is None and module.perturbation_head is None
    assert module.phenotype_head is not None and module.next_embedding is not None
    model.train(max_epochs=1, validation_size=0.0, **QUIET)
    present = {key[: -len("_train")] for key in model.history if key.endswith("_train")}
    assert {"next_cell", "mlm", "next_phenotype", "contrastive"} <= present
    removed = {"cell_type", "next_cell_type", "phenotype", "next_embedding", "triplet"}
    assert not present & removed, present & removed
    # No current-cell phenotype head: a clear error; the next-cell one works.
    with pytest.raises(ValueError, match="phenotype_weight=0"):
        model.predict_phenotype(adata[:5])
    assert model.predict_phenotype(adata[:5], ["REG08"]).shape == (5, 3)
    pred = model.predict_perturbation(adata[:5], ["REG08"])
    assert "predicted_cell_type" not in pred.obs and "predicted_phenotype" in pred.obs


def test_all_head_weights_zero_is_the_plain_model(simulated, small_model):
    adata = simulated[0][:400].copy()
    _setup(adata)
    zeros = {
        name: 0.0
        for name in (
            "cell_type_weight",
            "next_cell_type_weight",
            "phenotype_weight",
            "next_phenotype_weight",
        )
    }
    module = px.PertTX(adata, **zeros, **small_model).module
    assert module.cell_type_head is None and module.phenotype_head is None
    assert module.next_embedding is None and not module._needs_target_embedding


def test_zinb_trains_and_sampling_respects_dropout(simulated, small_model):
    adata = simulated[0][:800].copy()
    _setup(adata, phenotype=False, cell_type=False)
    model = px.PertTX(adata, likelihood="zinb", **small_model)
    model.train(max_epochs=2, validation_size=0.1, **QUIET)
    assert {"next_cell_train", "next_cell_validation"} <= set(model.history)
    assert np.isfinite(model.history["next_cell_train"].iloc[:, 0].astype(float)).all()
    ctrl = adata[adata.obs["perturbation"] == "control"][:60]
    pred = model.predict_perturbation(ctrl, ["REG08"], n_samples=3, seed=1)
    counts = pred.layers["counts"].toarray()
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    assert (pred.X >= 0).all() and (pred.X <= np.log1p(1e4)).all()  # log1p(CP10k) scale

    # Set every dropout probability to sigmoid(2) = 0.88: at least that share of the sampled
    # counts is zero, and the predicted mean (which includes zero inflation) moves with it.
    with torch.no_grad():
        model.module.dropout_head[-1].weight.zero_()
        model.module.dropout_head[-1].bias.fill_(2.0)
    more = model.predict_perturbation(ctrl, ["REG08"], n_samples=3, seed=1)
    zeros_before = (counts == 0).mean()
    zeros_after = (more.layers["counts"].toarray() == 0).mean()
    assert zeros_after > max(zeros_before + 0.2, 0.85), (zeros_before, zeros_after)
    assert not np.allclose(more.X, pred.X)


@pytest.mark.slow
def test_zinb_dropout_head_finds_excess_zeros(simulated, small_model):
    """On data with half of the entries of 30 genes zeroed, the learnt dropout probability
    ranks those genes above the others (after 4 epochs it has not yet reached the true 0.5:
    it starts at sigmoid(-3), near plain NB)."""
    adata = simulated[0][:800].copy()
    rng = np.random.default_rng(0)
    inflated = rng.choice(adata.n_vars, 30, replace=False)
    counts = adata.X.toarray()
    drop = rng.random((adata.n_obs, inflated.size)) < 0.5
    counts[:, inflated] = np.where(drop, 0.0, counts[:, inflated])
    adata.X = sp.csr_matrix(counts)
    _setup(adata, phenotype=False, cell_type=False)
    model = px.PertTX(adata, likelihood="zinb", mlm_weight=0.0, **small_model)
    model.train(max_epochs=4, validation_size=0.0, **QUIET)
    module = model.module.eval()
    with torch.inference_mode():
        z = module.embed_cells(torch.from_numpy(counts[:200]))
        gene_sets = torch.full((200, 2), -1, dtype=torch.long)
        dropout = torch.sigmoid(module.predict_next(z, gene_sets)["dropout_logits"]).mean(0)
    dropout = dropout.numpy()
    others = np.setdiff1d(np.arange(adata.n_vars), inflated)
    # Share of (inflated, other) gene pairs ordered rightly: the AUROC of the dropout head.
    auroc = (dropout[inflated][:, None] > dropout[others][None, :]).mean()
    assert auroc > 0.85, auroc
    assert dropout[inflated].mean() > 2 * dropout[others].mean()


def test_predict_phenotype_without_phenotype_keys_is_a_clear_error(simulated, small_model):
    adata = simulated[0][:300].copy()
    _setup(adata, phenotype=False)
    model = px.PertTX(adata, **small_model)
    with pytest.raises(ValueError, match="set up without phenotype_keys"):
        model.predict_phenotype(adata)
    with pytest.raises(ValueError, match="set up without phenotype_keys"):
        model.predict_phenotype(adata, ["REG08"])


def test_bad_head_arguments(simulated, small_model):
    adata = simulated[0][:300].copy()
    _setup(adata, cell_type=False)
    with pytest.raises(ValueError, match="contrastive_labels='cell_type' needs"):
        px.PertTX(adata, contrastive_weight=1.0, contrastive_labels="cell_type", **small_model)
    with pytest.raises(ValueError, match="contrastive_labels must be"):
        px.PertTX(adata, contrastive_labels="batch", **small_model)
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        px.PertTX(adata, triplet_weight=-1.0, **small_model)
    with pytest.raises(ValueError, match="likelihood must be"):
        px.PertTX(adata, likelihood="poisson", **small_model)
    non_integer = adata.copy()
    non_integer.X = non_integer.X * 0.5
    _setup(non_integer, cell_type=False)
    with pytest.raises(ValueError, match="non-integer"):
        px.PertTX(non_integer, likelihood="zinb", **small_model)


# ---- loss functions -----------------------------------------------------------------------


def test_contrastive_and_triplet_losses_prefer_separated_labels():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    centres = torch.randn(4, 16, generator=generator) * 5
    separated = centres[labels] + 0.1 * torch.randn(32, 16, generator=generator)
    mixed = torch.randn(32, 16, generator=generator)
    assert supervised_contrastive_loss(separated, labels).mean() < (
        supervised_contrastive_loss(mixed, labels).mean()
    )
    assert triplet_loss(separated, labels, margin=0.2).mean() == 0.0
    assert triplet_loss(mixed, labels, margin=0.2).mean() > 0.0
    # Anchors without a positive (or a negative) contribute zero; one cell gives no NaN.
    single = torch.randn(1, 16, requires_grad=True)
    loss = supervised_contrastive_loss(single, torch.tensor([0])) + triplet_loss(
        single, torch.tensor([0])
    )
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.isfinite(single.grad).all()


def test_classification_and_regression_losses_skip_missing_labels():
    logits = torch.zeros(3, 4)
    loss = classification_loss(logits, torch.tensor([0, -1, 2]))
    assert loss[1] == 0.0 and torch.allclose(loss[[0, 2]], torch.tensor(np.log(4.0)).float())
    observed = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    loss = regression_loss(torch.zeros(2, 2), observed)
    assert torch.allclose(loss, torch.tensor([1.0, 0.0]))
