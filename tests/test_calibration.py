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
    """L2 over genes (log-normalised), on a wide, shallow screen.

    - The control label's prediction against the observed mean of the reference half of the
      controls: at most the split-half distance (margin 0).
    - A trained perturbation without effect: its predicted effect (predicted profile minus the
      predicted control) is at most 10 % larger than the difference between its own observed
      cells and the controls, i.e. the model does not invent an effect beyond the label's own
      sample noise. The noise itself cannot be beaten (the label's effect is fitted to its 200
      cells), so the distance of the prediction to the reference half is printed, not asserted:
      it adds the predicted control's error to that noise and moved with the CPU's floating-point
      order (4.91 at 1 thread, 4.93 at 2 threads here, 5.15 on the CI machine at commit d7a540b).
      Measured here 2026-11-30 (default training, 20 epochs, 2 threads): predicted effect 3.94
      against observed 4.06; split-half 4.82, predicted control 3.17.
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
    observed_noise = np.linalg.norm(mean(labels == "NOEFFECT") - mean(labels == "control"))
    predicted = model.predict_profiles(adata[fit], ["NOEFFECT", "control"]).to_numpy()
    no_effect, control = np.linalg.norm(predicted - reference_mean, axis=1)
    predicted_effect = np.linalg.norm(predicted[0] - predicted[1])
    print(
        f"split-half {split_half:.3f}, predicted control {control:.3f}, predicted NOEFFECT "
        f"{no_effect:.3f}; NOEFFECT effect predicted {predicted_effect:.3f}, observed "
        f"{observed_noise:.3f}"
    )
    assert control <= split_half
    assert predicted_effect <= 1.1 * observed_noise
