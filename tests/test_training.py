"""Training options: optimisers, schedules, precision, loggers, early stopping, pairing."""

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

import pertx_scvi as px
from pertx_scvi.data import ControlSampler, PairedBatchDataset
from pertx_scvi.train import lr_multiplier, resolve_precision


@pytest.fixture(scope="module")
def screen(tiny_screen):
    adata = tiny_screen.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata


@pytest.mark.parametrize(
    ("optimizer", "lr", "expected"),
    [("adamw", 3e-3, "AdamW"), ("lion", 1e-3, "Lion"), ("prodigy", 1.0, "Prodigy")],
)
def test_optimizers_are_used_and_train(screen, optimizer, lr, expected, tiny_model):
    model = px.PertTX(screen, **tiny_model)
    model.train(
        max_epochs=6, optimizer=optimizer, lr=lr, lr_schedule="constant", enable_progress_bar=False
    )
    assert type(model.trainer.optimizers[0]).__name__ == expected
    losses = model.history["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert np.isfinite(losses).all()
    if optimizer != "prodigy":  # Prodigy's step-size search needs more steps than this
        assert losses[-1] < losses[0]


def test_unknown_optimizer_is_an_error(screen, tiny_model):
    model = px.PertTX(screen, **tiny_model)
    with pytest.raises(ValueError, match="'sgd'"):
        model.train(max_epochs=1, optimizer="sgd", enable_progress_bar=False)


def test_schedules():
    cosine = lr_multiplier("cosine", total_steps=110, warmup_steps=10, min_factor=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(110) == pytest.approx(0.1)
    assert cosine(60) == pytest.approx(0.55)
    step = lr_multiplier("step", total_steps=100, warmup_steps=0, step_every=10, step_gamma=0.5)
    assert step(9) == 1.0 and step(10) == 0.5 and step(25) == 0.25
    assert lr_multiplier("constant", 100, 0)(99) == 1.0
    with pytest.raises(ValueError, match="'linear'"):
        lr_multiplier("linear", 10, 0)


def test_mixed_precision_is_gpu_only():
    assert resolve_precision(None, "cpu") == "32-true"
    with pytest.raises(ValueError, match="GPU-only"):
        resolve_precision("bf16-mixed", "cpu")


class _ImageLogger(Logger):
    """A Lightning logger that records what it is given (stands in for wandb here)."""

    def __init__(self):
        super().__init__()
        self.metrics, self.images = [], []

    @property
    def name(self):
        return "images"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_image(self, key, images, step=None):
        self.images.append((key, len(images)))


def test_logger_passes_through_with_umap_images_and_history_kept(screen, tiny_model):
    model = px.PertTX(screen, **tiny_model)
    recorder = _ImageLogger()
    model.train(max_epochs=2, validation_size=0.2, logger=recorder, enable_progress_bar=False)
    assert recorder.images == [("umap_X_pertx", 1), ("umap_X_pertx", 1)]
    assert any("validation_loss" in m for m in recorder.metrics)
    assert len(model.history["train_loss"]) == 2
    assert model.module.training is False


def test_csv_logger_by_name(screen, tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    model = px.PertTX(screen, **tiny_model)
    model.train(max_epochs=1, logger="csv", enable_progress_bar=False)
    assert list(tmp_path.glob("pertx_logs/**/metrics.csv"))


def test_early_stopping_stops_on_validation_loss(screen, tiny_model):
    model = px.PertTX(screen, **tiny_model)
    model.train(
        max_epochs=30,
        lr=0.0,
        validation_size=0.2,
        early_stopping=True,
        early_stopping_patience=2,
        enable_progress_bar=False,
    )
    assert len(model.history["validation_loss"]) < 30


def test_pairing_draws_controls_of_the_same_context_and_redraws():
    context = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    controls = np.array([0, 1, 3, 4])
    sampler = ControlSampler(controls, context)
    rng = np.random.default_rng(0)
    targets = np.array([2, 5, 6, 7] * 50)
    drawn = sampler.draw(targets, rng)
    assert np.array_equal(context[drawn], context[targets])
    assert set(drawn[context[targets] == 0]) == {0, 1}
    again = sampler.draw(targets, rng)
    assert not np.array_equal(drawn, again)


def test_validation_pairs_are_fixed_training_pairs_are_redrawn(screen, tiny_model):
    model = px.PertTX(screen, **tiny_model)
    cells = model._registered_cells()
    controls = np.flatnonzero(np.isin(cells.label_codes, model._control_codes()))
    sampler = ControlSampler(controls, cells.context)
    targets = np.arange(screen.n_obs)
    fixed = PairedBatchDataset(cells, targets, sampler, seed=1, fixed_sources=True)
    redrawn = PairedBatchDataset(cells, targets, sampler, seed=1)
    positions = list(range(64))
    a, b = fixed[positions], fixed[positions]
    assert torch.equal(a["source_x"], b["source_x"])
    c, d = redrawn[positions], redrawn[positions]
    assert not torch.equal(c["source_x"], d["source_x"])
    assert torch.equal(c["target_x"], d["target_x"])


@pytest.mark.parametrize(
    "options",
    [
        {"max_genes": 12, "value_encoding": "binned"},
        {"mlm_cell": "target", "value_encoding": "continuous"},
    ],
)
def test_token_options_train_and_predict_every_gene(screen, options, tiny_model):
    """Fewer tokens than genes, binned values, masking the target: all through the public API."""
    torch.manual_seed(0)
    model = px.PertTX(screen, **tiny_model, **options)
    model.train(max_epochs=8, lr=3e-3, lr_schedule="constant", enable_progress_bar=False)
    losses = model.history["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert losses[-2:].mean() < losses[:2].mean(), losses
    controls = screen[screen.obs["perturbation"] == "control"][:10]
    prediction = model.predict_perturbation(controls, ["REG01"])
    assert prediction.shape == (10, screen.n_vars)
    latent = model.get_latent_representation(controls)
    np.testing.assert_array_equal(latent, model.get_latent_representation(controls))


def test_bad_token_options_are_clear_errors(screen):
    with pytest.raises(ValueError, match="mlm_cell"):
        px.PertTX(screen, mlm_cell="both")
    with pytest.raises(ValueError, match="max_genes"):
        px.PertTX(screen, max_genes=0)
    with pytest.raises(ValueError, match="value_encoding"):
        px.PertTX(screen, value_encoding="rank")


def test_wandb_logger_offline_logs_losses_and_umap_images(
    screen, tmp_path, monkeypatch, tiny_model
):
    """logger="wandb" (offline: no account, no network): losses and UMAP images reach the run."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = px.PertTX(screen, **tiny_model)
    try:
        model.train(max_epochs=2, validation_size=0.2, logger="wandb", enable_progress_bar=False)
        summary = dict(wandb.run.summary)
    finally:
        wandb.finish()
    assert "validation_loss" in summary and "train_loss" in summary
    images = list(tmp_path.glob("wandb/offline-run-*/files/media/images/umap_X_pertx*.png"))
    assert len(images) == 2  # one UMAP per validation epoch
    assert len(model.history["train_loss"]) == 2


def test_import_needs_no_wandb_flash_or_gpu():
    """``import pertx_scvi`` loads neither wandb nor flash-attn (fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, pertx_scvi; pertx_scvi.PertTX; "
        "assert 'wandb' not in sys.modules and 'flash_attn' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
