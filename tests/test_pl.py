"""Plotting functions: each writes a PNG and draws the expected panels."""

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pertx_scvi import metrics, pl  # noqa: E402

GENES = [f"G{i}" for i in range(30)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def profiles():
    rng = np.random.default_rng(0)
    control = pd.Series(rng.uniform(0, 3, len(GENES)), index=GENES)
    labels = ["A", "B", "C", "A+B", "D"]
    effect = rng.normal(0, 1, (len(labels), len(GENES)))
    observed = pd.DataFrame(control.to_numpy() + effect, index=labels, columns=GENES)
    noise = rng.normal(0, 0.3, effect.shape)
    # Predictions with the genes in another order: the functions align them by name.
    predicted = pd.DataFrame(
        control.to_numpy() + 0.8 * effect + noise, index=labels, columns=GENES
    )[GENES[::-1]]
    return predicted, observed, control


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effect_scatter_one_panel_per_perturbation(profiles, tmp_path):
    predicted, observed, control = profiles
    path = tmp_path / "sub" / "scatter.png"
    fig = pl.effect_scatter(predicted, observed, control, save=path)
    assert _is_png(path)
    assert len(fig.axes) == 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("A\nr=") and "r_top=" in titles[0]
    # r in the title is the Pearson of the Δ over all genes.
    delta_obs = observed.loc["A"] - control
    delta_pred = predicted.loc["A", GENES] - control
    expected = np.corrcoef(delta_obs, delta_pred)[0, 1]
    assert f"r={expected:.2f}" in titles[0]


def test_effect_scatter_subset_and_separate_observed_control(profiles, tmp_path):
    predicted, observed, control = profiles
    fig = pl.effect_scatter(
        predicted,
        observed,
        control,
        perturbations=["D", "A"],
        observed_control_mean=control.to_numpy() + 0.1,
        save=tmp_path / "s.png",
    )
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["D", "A"]
    with pytest.raises(ValueError, match="no row"):
        pl.effect_scatter(predicted, observed, control, perturbations=["Z"])
    with pytest.raises(ValueError, match=r"lacks 25 gene\(s\)"):
        pl.effect_scatter(predicted, observed, control.iloc[:5])


def test_de_heatmap_panels_and_colorbar(profiles, tmp_path):
    predicted, observed, control = profiles
    path = tmp_path / "heat.png"
    fig = pl.de_heatmap(predicted, observed, control, save=path, n_genes=8, ncols=2)
    assert _is_png(path)
    assert len(fig.axes) == 5 + 1  # one per perturbation and the colour bar
    first = fig.axes[0]
    assert len(first.get_xticklabels()) == 8
    # The top genes of A are those with the largest |observed Δ|.
    delta = (observed.loc["A"] - control).abs().sort_values(ascending=False, kind="stable")
    assert [t.get_text() for t in first.get_xticklabels()] == list(delta.index[:8])
    image = first.get_images()[0].get_array()
    assert image.shape == (2, 8)


def test_metric_bars_one_panel_per_metric(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for method in ("PertTX", "train_mean", "control_mean"):
        for p in ("A", "B", "C", "D"):
            for metric in ("pearson_delta", "mse_top20", "discrimination"):
                rows.append((method, p, metric, rng.uniform()))
    df = pd.DataFrame(rows, columns=["method", "perturbation", "metric", "value"])
    summary = metrics.summarize(df, n_boot=100)
    path = tmp_path / "bars.png"
    fig = pl.metric_bars(summary, save=path)
    assert _is_png(path)
    assert len(fig.axes) == 3
    assert fig.axes[1].get_title() == "mse_top20 (lower is better)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "PertTX",
        "train_mean",
        "control_mean",
    ]
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    expected = summary[summary.metric == "pearson_delta"]["mean"].to_numpy()
    np.testing.assert_allclose(heights, expected)
    fig2 = pl.metric_bars(summary, metrics=["discrimination"], methods=["train_mean", "PertTX"])
    assert len(fig2.axes) == 1 and len(fig2.axes[0].patches) == 2
    with pytest.raises(ValueError, match="several rows"):
        pl.metric_bars(pd.concat([summary, summary]))
    with pytest.raises(ValueError, match="lacks"):
        pl.metric_bars(df)


def test_loss_curves_groups_train_and_validation(tmp_path):
    epochs = pd.Index(range(5), name="epoch")

    def frame(name, start):
        return pd.DataFrame({name: start / (1 + np.arange(5))}, index=epochs)

    history = {
        "train_loss": frame("train_loss", 10.0),
        "validation_loss": frame("validation_loss", 11.0),
        "mlm_train": frame("mlm_train", 3.0),
        "mlm_validation": frame("mlm_validation", 3.5),
        "next_cell_train": frame("next_cell_train", 6.0),
        "lr-AdamW": frame("lr-AdamW", 0.001),
    }
    path = tmp_path / "loss.png"
    fig = pl.loss_curves(history, save=path)
    assert _is_png(path)
    assert [ax.get_title() for ax in fig.axes] == ["total loss", "mlm", "next_cell"]
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[2].get_lines()) == 1
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), 10.0 / (1 + np.arange(5)))
    with pytest.raises(ValueError, match="empty"):
        pl.loss_curves({})


def test_umap_of_the_embedding(tmp_path):
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((60, 3), dtype=np.float32))
    adata.obs["perturbation"] = pd.Categorical(np.repeat(["control", "A", "B"], 20))
    adata.obsm["X_pertx"] = rng.normal(size=(60, 8)) + np.repeat(np.eye(3, 8) * 5, 20, axis=0)
    path = tmp_path / "umap.png"
    fig = pl.umap(adata, color="perturbation", save=path, n_neighbors=5)
    assert _is_png(path)
    assert "X_umap" in adata.obsm and adata.obsm["X_umap"].shape == (60, 2)
    assert len(fig.axes) >= 1
    with pytest.raises(KeyError, match="X_other"):
        pl.umap(adata, use_rep="X_other")
