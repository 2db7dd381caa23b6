"""Streaming prediction (``predict_perturbation(output=...)``): per-perturbation means, files
written block by block, memory bounded by the block, the exact estimator of X, bad input."""

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SIMULATION

import pertx_scvi as px
from pertx_scvi.module._expected import exact_expected_log_normalized

LABELS = ["REG01", "REG02", "REG01+REG02"]


@pytest.fixture(scope="module")
def trained(tiny_model, train_model):
    """A tiny screen with two cell types and a phenotype (so the heads write columns)."""
    adata = px.datasets.simulate(**TINY_SIMULATION, n_cell_types=2)[0].copy()
    px.PertTX.setup_anndata(
        adata,
        perturbation_key="perturbation",
        control_group="control",
        cell_type_key="cell_type",
        phenotype_keys=["phenotype"],
    )
    model = train_model(adata, tiny_model, max_epochs=1, validation_size=0.0)
    return model, adata[adata.obs["perturbation"] == "control"]


def test_means_are_the_means_of_the_predicted_cells(trained):
    model, controls = trained
    for estimator in ("monte_carlo", "exact"):
        kwargs = {"batch_size": 16, "seed": 3, "x_estimator": estimator}
        cells = model.predict_perturbation(controls, LABELS, n_samples=2, **kwargs)
        means = model.predict_perturbation(controls, LABELS, output="means", **kwargs)
        assert list(means.obs_names) == LABELS and list(means.var_names) == list(cells.var_names)
        assert (means.obs["n_cells"] == controls.n_obs).all()
        groups = cells.obs["perturbation"].to_numpy()
        for i, label in enumerate(LABELS):
            rows = groups == label
            np.testing.assert_allclose(means.X[i], cells.X[rows].mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                means.layers["mean"][i], cells.layers["mean"][rows].mean(0), rtol=1e-5
            )
            probabilities = cells.obsm["cell_type_probabilities"].to_numpy()[rows].mean(0)
            np.testing.assert_allclose(
                means.obsm["cell_type_probabilities"].to_numpy()[i], probabilities, rtol=1e-5
            )
            np.testing.assert_allclose(
                means.obs["predicted_phenotype"].iloc[i],
                cells.obs["predicted_phenotype"][rows].mean(),
                rtol=1e-5,
            )
        profiles = model.predict_profiles(controls, LABELS, **kwargs)
        np.testing.assert_allclose(profiles.to_numpy(), means.X, rtol=1e-6, atol=1e-7)
    # No count draws: one row per source cell and perturbation, the same X.
    plain = model.predict_perturbation(controls, LABELS, n_samples=0, batch_size=16, seed=3)
    drawn = model.predict_perturbation(controls, LABELS, n_samples=1, batch_size=16, seed=3)
    assert plain.n_obs == len(LABELS) * controls.n_obs and "counts" not in plain.layers
    np.testing.assert_array_equal(plain.X, drawn.X)


@pytest.mark.parametrize("file_format", ["h5ad", "zarr"])
def test_file_output_reads_back_as_the_in_memory_prediction(trained, tmp_path, file_format):
    model, controls = trained
    # 60 sources in blocks of 16: the last block is short and blocks straddle file chunks.
    kwargs = {"n_samples": 2, "batch_size": 16, "seed": 5}
    expected = model.predict_perturbation(controls, LABELS, **kwargs)
    path = tmp_path / f"pred.{file_format}"
    written = model.predict_perturbation(controls, LABELS, output=file_format, path=path, **kwargs)
    assert written == path
    read = ad.read_h5ad if file_format == "h5ad" else ad.read_zarr
    result = read(path)
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result.X, expected.X)
    np.testing.assert_array_equal(result.layers["mean"], expected.layers["mean"])
    assert (result.layers["counts"] != expected.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(result.obs, expected.obs)
    pd.testing.assert_frame_equal(result.var, expected.var)
    pd.testing.assert_frame_equal(
        result.obsm["cell_type_probabilities"], expected.obsm["cell_type_probabilities"]
    )
    assert result.uns["pertx"] == expected.uns["pertx"]
    # Nothing is left beside the file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _peak_bytes(predict) -> int:
    tracemalloc.start()
    try:
        predict()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_grows_with_the_block_not_with_the_cells(trained, tmp_path):
    """Peak traced allocations (numpy and Python; torch's own buffers are per batch) on N and
    4N source cells: the in-memory prediction grows with the predicted cells, the means and
    the file outputs by less than a tenth of that (what grows is per source cell: the
    transferred obs and label codes, not per predicted cell and gene). N is above the 2,500
    rows the input check reads (a bounded sample, the same peak for both)."""
    model, controls = trained
    labels = [f"REG0{i}" for i in range(4)]

    def sources(n: int) -> ad.AnnData:
        cells = ad.concat([controls] * int(np.ceil(n / controls.n_obs)))[:n].copy()
        cells.obs_names = [f"c{i}" for i in range(n)]
        return cells

    small, large = sources(2600), sources(10400)
    common = {"n_samples": 0, "batch_size": 256, "seed": 0, "x_estimator": "exact"}

    def growth(**kwargs) -> int:
        peaks = []
        for i, cells in enumerate((small, large)):
            path = tmp_path / f"{i}.h5ad" if kwargs.get("output") == "h5ad" else None
            peaks.append(
                _peak_bytes(
                    lambda cells=cells, path=path: model.predict_perturbation(
                        cells, labels, path=path, **common, **kwargs
                    )
                )
            )
        return peaks[1] - peaks[0]

    in_memory = growth()
    # X and layers["mean"], float32, per added predicted cell.
    output_bytes = (large.n_obs - small.n_obs) * len(labels) * controls.n_vars * 4 * 2
    assert in_memory >= output_bytes  # the measurement sees the arrays
    assert growth(output="means") < 0.1 * output_bytes
    assert growth(output="h5ad") < 0.1 * output_bytes


def test_bad_output_arguments_are_clear_errors(trained, tmp_path):
    model, controls = trained
    predict = model.predict_perturbation
    with pytest.raises(ValueError, match="output must be one of"):
        predict(controls, LABELS, output="csv")
    with pytest.raises(ValueError, match="pass path="):
        predict(controls, LABELS, output="h5ad")
    with pytest.raises(ValueError, match="path is the file of"):
        predict(controls, LABELS, path=tmp_path / "x.h5ad")
    with pytest.raises(ValueError, match="n_samples"):
        predict(controls, LABELS, output="means", n_samples=2)
    with pytest.raises(ValueError, match="x_estimator"):
        predict(controls, LABELS, x_estimator="laplace")
    with pytest.raises(ValueError, match="more than once"):
        predict(controls, ["REG01", "REG01"])
    with pytest.raises(ValueError, match="batch_size"):
        predict(controls, LABELS, batch_size=0)
    with pytest.raises(ValueError, match="n_samples must be >= 0"):
        predict(controls, LABELS, n_samples=-1)
    existing = tmp_path / "pred.h5ad"
    existing.write_text("not a prediction")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        predict(controls, LABELS, output="h5ad", path=existing)
    assert existing.read_text() == "not a prediction"
    predict(controls, LABELS, output="h5ad", path=existing, overwrite=True)
    assert ad.read_h5ad(existing).n_obs == len(LABELS) * controls.n_obs
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="not a zarr store"):
        predict(controls, LABELS, output="zarr", path=folder, overwrite=True)
    # A label that cannot be predicted fails before anything is written.
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        predict(controls, ["NOT_A_GENE"], output="h5ad", path=tmp_path / "never.h5ad")
    assert not (tmp_path / "never.h5ad").exists()
    with pytest.warns(FutureWarning, match="chunk_size"):
        model.predict_profiles(controls, LABELS, chunk_size=2)


def _fine_quadrature(mean, theta, pi):
    """The integral of exact_expected_log_normalized in float64 with a 0.05 step over a wide
    range of u = log t (the reference of its 0.75 step)."""
    u = np.arange(-40.0, 4.0, 0.05)
    t = np.exp(u)
    c_total, c_gene = -np.expm1(-t), -np.expm1(-(1 + 1e4) * t)

    def log_pgf(c):
        log_nb = -theta[None, :, None] * np.log1p((mean / theta)[:, :, None] * c)
        if pi is None:
            return log_nb
        return np.logaddexp(np.log(pi)[:, :, None], np.log1p(-pi)[:, :, None] + log_nb)

    log_total = log_pgf(c_total)
    integrand = np.exp(log_total.sum(1, keepdims=True)) * -np.expm1(log_pgf(c_gene) - log_total)
    return 0.05 * integrand.sum(-1)


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_exact_estimator_of_x_matches_the_sampled_cells(zero_inflated):
    """exact_expected_log_normalized: within 5e-5 of a fine float64 quadrature, and within the
    Monte Carlo error of 4,000 sampled cells per source, without bias (libraries of 5 to
    3,000 counts)."""
    generator = torch.Generator().manual_seed(0)
    n_genes = 50
    weights = torch.rand(n_genes, generator=generator) ** 4 + 1e-3
    library = torch.tensor([[5.0], [60.0], [400.0], [3000.0]])
    mean = weights / weights.sum() * library
    theta = torch.exp(torch.randn(n_genes, generator=generator))
    logits = torch.randn(4, n_genes, generator=generator) - 2 if zero_inflated else None
    exact = exact_expected_log_normalized(mean, theta, logits, 1e4)
    pi = None if logits is None else torch.sigmoid(logits).double().numpy()
    reference = _fine_quadrature(mean.double().numpy(), theta.double().numpy(), pi)
    np.testing.assert_allclose(exact.numpy(), reference, atol=5e-5)

    n_draws = 4000
    rate = torch._standard_gamma(
        theta.expand(n_draws, 4, n_genes).contiguous(), generator=generator
    )
    counts = torch.poisson(rate * mean / theta, generator=generator)
    if logits is not None:
        counts = counts * torch.bernoulli(
            torch.sigmoid(-logits).expand_as(counts), generator=generator
        )
    values = torch.log1p(counts / counts.sum(-1, keepdim=True).clamp(min=1.0) * 1e4)
    sampled, error = values.mean(0), values.std(0) / np.sqrt(n_draws)
    assert ((exact - sampled).abs() <= 4 * error + 1e-6).float().mean() > 0.97
    # No bias: the standardised differences average to 0 (their mean's SE: 1 / sqrt(~200)).
    spread = error > 0
    assert ((exact - sampled)[spread] / error[spread]).mean().abs() < 0.3
