"""Shared fixtures: the real-data folder, the simulated screens, model sizes, and a seeded
builder of trained models.

Every test starts with torch seeded and leaves torch's CPU thread count as the session found
it: scanpy's numba kernels (neighbours, UMAP, normalisation) reset the OpenMP pool torch
shares, so a model trained after a test that ran them would train with more threads (many
times slower on a busy machine, and with other rounding).
"""

import os
from pathlib import Path

import pytest
import torch

import pertx_scvi as px

_DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_TORCH_THREADS = torch.get_num_threads()

# The acceptance screen: 1,300 cells (300 controls, 40 per label), 100 genes, 20 regulators in
# 5 modules, 5 two-gene combinations.
SCREEN = {
    "n_genes": 100,
    "n_regulators": 20,
    "n_modules": 5,
    "n_cells_per_perturbation": 40,
    "n_control_cells": 300,
    "n_combinations": 5,
    "seed": 0,
}


@pytest.fixture(autouse=True)
def _torch_state():
    torch.manual_seed(0)
    yield
    torch.set_num_threads(_TORCH_THREADS)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder with the shared real data (``$PERTX_DATA_DIR`` or ``../shared/data``); skips when absent."""
    path = Path(os.environ.get("PERTX_DATA_DIR", _DEFAULT_DATA_DIR))
    if not (path / "perturb").is_dir():
        pytest.skip(f"real data not found at {path}; set PERTX_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def small_model() -> dict:
    """Model size of the acceptance tests (d_model 32, one layer)."""
    return {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_hidden": 64, "dropout": 0.0}


@pytest.fixture(scope="session")
def tiny_model() -> dict:
    """Model size of the tests of options, inputs and files (d_model 16, one layer)."""
    return {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_hidden": 32, "dropout": 0.0}


@pytest.fixture(scope="session")
def simulated():
    """``(adata, truth, network)`` of the acceptance screen; copy ``adata`` before setup."""
    return px.datasets.simulate(**SCREEN)


@pytest.fixture(scope="session")
def simulated_cell_types():
    """The acceptance screen with 3 cell types (baseline shifts N(0, 1) on 30 % of genes);
    ``obs["phenotype"]`` a noisy linear score of 5 module-target genes, ``obs[
    "phenotype_noiseless"]`` the same without noise. Copy ``adata`` before setup."""
    return px.datasets.simulate(**SCREEN, n_cell_types=3)


# A tiny screen: 40 genes, 60 controls, REG00-REG05 (10 cells each) and two combinations.
TINY_SIMULATION = {
    "n_genes": 40,
    "n_regulators": 6,
    "n_modules": 2,
    "n_control_cells": 60,
    "n_cells_per_perturbation": 10,
    "n_combinations": 2,
    "seed": 1,
}


@pytest.fixture(scope="session")
def tiny_simulation():
    """``(adata, truth, network)`` of :data:`TINY_SIMULATION`. Copy ``adata`` before changing
    or registering it."""
    return px.datasets.simulate(**TINY_SIMULATION)


@pytest.fixture(scope="session")
def tiny_screen(tiny_simulation):
    """The tiny simulation's unregistered AnnData (copy it before changing or registering it)."""
    return tiny_simulation[0]


@pytest.fixture(scope="session")
def train_model():
    """``train_model(adata, size, model_kwargs=None, **train_kwargs)``: a PertTX built with
    ``size`` and ``model_kwargs`` and trained (no progress bar), torch seeded first, so that
    module-scoped trained models do not depend on which tests ran before."""

    def train(adata, size: dict, model_kwargs: dict | None = None, **train_kwargs):
        train_kwargs.setdefault("enable_progress_bar", False)
        torch.manual_seed(0)
        model = px.PertTX(adata, **size, **(model_kwargs or {}))
        model.train(**train_kwargs)
        return model

    return train
