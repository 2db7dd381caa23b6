"""Calibration on a wide, shallow screen: a prediction without effect sits at the controls."""

import numpy as np
import pytest

import pertx_scvi as px

# 2,000 genes at about 1,000 UMIs per cell, as many real screens; 200 control cells relabelled
# as a perturbation without any effect. Settings fixed before the first run.
SIM = {
    "n_genes": 2000,
    "n_regulators": 4,
    "n_modules": 2,
    "targets_per_module": 30,
    "n_control_cells": 600,
    "n_cells_per_perturbation": 80,
    "n_combinations": 0,
    "library_size": 1000.0,
    "seed": 0,
}


@pytest.mark.slow
def test_predictions_without_effect_sit_at_the_controls():
    """L2 over genes (log-normalised) between predicted profiles and the observed mean of the
    reference half of the controls, against the distance between the two control halves.

    - The control label itself: at most the split-half distance (margin 0).
    - A trained perturbation without effect: at most 5 % above the larger of the split-half
      distance and the distance of its own observed cells to the reference half. A trained
      label's effect is fitted to its own 200 cells, whose sample noise is as large as a
      control half's, so its prediction cannot beat that noise: measured 2026-11-30 (default
      training, 20 epochs): split-half 4.819, its observed cells 4.769, the prediction
      4.83-4.91 over runs (4.75 after 40 epochs), the control prediction 3.10-3.13. Before
      predictions were on the expected log-normalised scale, the log of the predicted mean sat
      about +0.3 per gene above the observed means (an L2 of about 13 here).
    """
    adata, _, _ = px.datasets.simulate(**SIM)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    controls = np.flatnonzero(labels == "control")
    relabelled = np.random.default_rng(0).choice(controls, 200, replace=False)
    labels[relabelled] = "NOEFFECT"
    adata.obs["perturbation"] = labels
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    model = px.PertTX(adata)
    model.train(enable_progress_bar=False)

    fit, reference = px.metrics.split_control(adata, "perturbation", "control", seed=1)
    normalized = px.metrics.log_normalize(adata)

    def mean(mask):
        return np.asarray(normalized[mask].mean(0)).ravel()

    reference_mean = mean(reference)
    split_half = np.linalg.norm(mean(fit) - reference_mean)
    own_cells = np.linalg.norm(mean(labels == "NOEFFECT") - reference_mean)
    predicted = model.predict_profiles(adata[fit], ["NOEFFECT", "control"])
    no_effect, control = np.linalg.norm(predicted.to_numpy() - reference_mean, axis=1)
    print(
        f"split-half {split_half:.3f}, NOEFFECT cells {own_cells:.3f}, predicted NOEFFECT "
        f"{no_effect:.3f}, predicted control {control:.3f}"
    )
    assert control <= split_half
    assert no_effect <= 1.05 * max(split_half, own_cells)
