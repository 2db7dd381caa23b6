"""Hybrid gene-token embeddings: pretrained rows frozen, the others learned; spectral tables."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import pertx_scvi as px
from pertx_scvi._model import project_gene_tokens
from pertx_scvi.graphs import spectral_embedding
from pertx_scvi.module._embeddings import ExpressionTokenizer, GeneHybridEmbedding

TRAIN = {"max_epochs": 1, "batch_size": 32, "seed": 0, "enable_progress_bar": False}


@pytest.fixture
def screen(tiny_screen):
    adata = tiny_screen.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata


def _table(genes, width: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {str(g): rng.normal(size=width) for g in genes}


def _tokens(model) -> GeneHybridEmbedding:
    return model.module.tokenizer.gene_embedding


def _vectors(model) -> torch.Tensor:
    return _tokens(model)().detach().clone()


# ---- module --------------------------------------------------------------------------------------
def test_without_table_it_is_an_nn_embedding():
    """Same parameter, init, random draws and state-dict key as nn.Embedding."""
    torch.manual_seed(3)
    reference = nn.Embedding(30, 8)
    after_reference = torch.rand(4)
    torch.manual_seed(3)
    hybrid = GeneHybridEmbedding(30, 8)
    assert torch.equal(hybrid.weight, reference.weight)
    assert torch.equal(torch.rand(4), after_reference)
    assert list(hybrid.state_dict()) == ["weight"]
    genes = torch.tensor([[0, 5], [29, 3]])
    assert torch.equal(hybrid(genes), reference(genes))
    assert torch.equal(hybrid(), reference.weight)
    assert not hybrid.has_table and not hybrid.is_frozen


def test_frozen_rows_get_no_gradient_and_no_weight_decay():
    table = torch.randn(10, 4)
    found = torch.arange(10) < 4
    hybrid = GeneHybridEmbedding(10, 4, table, found)
    assert hybrid.n_pretrained == 4 and hybrid.is_frozen
    assert torch.equal(hybrid()[found], table[found])
    # only the learned parameter is trainable: the pretrained rows are a buffer
    assert [name for name, _ in hybrid.named_parameters()] == ["weight"]
    optimiser = torch.optim.AdamW(hybrid.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        optimiser.zero_grad()
        hybrid(torch.arange(10)).pow(2).sum().backward()
        assert hybrid.weight.grad[found].abs().sum() == 0
        assert hybrid.weight.grad[~found].abs().sum() > 0
        optimiser.step()
    assert torch.equal(hybrid()[found], table[found])
    assert not torch.isclose(hybrid()[~found], table[~found]).any()


def test_unfreeze_trains_every_row_and_freeze_fixes_them_again():
    table = torch.randn(6, 3)
    found = torch.tensor([True, True, False, False, True, False])
    hybrid = GeneHybridEmbedding(6, 3, table, found)
    hybrid.unfreeze()
    assert not hybrid.is_frozen
    assert torch.equal(hybrid()[found], table[found])  # fine-tuning starts from the table
    optimiser = torch.optim.SGD(hybrid.parameters(), lr=0.1)
    hybrid().pow(2).sum().backward()
    assert (hybrid.weight.grad.abs().sum(1) > 0).all()
    optimiser.step()
    tuned = hybrid().detach().clone()
    assert not torch.isclose(tuned[found], table[found]).any()
    hybrid.freeze()
    assert hybrid.is_frozen
    assert torch.equal(hybrid(), tuned)  # fixed at the fine-tuned values
    optimiser.zero_grad()
    hybrid().pow(2).sum().backward()
    assert hybrid.weight.grad[found].abs().sum() == 0


def test_module_checks_the_table():
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(5, 6\)"):
        GeneHybridEmbedding(5, 4, torch.zeros(5, 6))
    with pytest.raises(ValueError, match="found"):
        GeneHybridEmbedding(5, 4, torch.ones(5, 4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs a table"):
        GeneHybridEmbedding(5, 4, found=torch.ones(5, dtype=torch.bool))
    bad = torch.ones(5, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        GeneHybridEmbedding(5, 4, bad, torch.ones(5, dtype=torch.bool))
    # default mask: finite, non-zero rows
    table = torch.ones(5, 4)
    table[1] = 0
    table[2, 0] = float("inf")
    assert GeneHybridEmbedding(5, 4, table).found.tolist() == [True, False, False, True, True]


def test_tokenizer_uses_the_hybrid_rows():
    table = torch.randn(7, 4)
    found = torch.arange(7) % 2 == 0
    tokenizer = ExpressionTokenizer(7, 4, gene_table=table, table_found=found)
    values = torch.rand(2, 7)
    genes = torch.tensor([[0, 2], [1, 4]])
    tokens = tokenizer(values, genes=genes)[:, 1:]  # without the CLS token
    identity = tokens - tokenizer.value_encoder(values.gather(1, genes))
    torch.testing.assert_close(identity[0], table[[0, 2]])
    torch.testing.assert_close(identity[1, 1], table[4])
    torch.testing.assert_close(identity[1, 0], tokenizer.gene_embedding.weight[1])


def test_projection_is_fixed_centred_and_unit_scale():
    rng = np.random.default_rng(1)
    wide = rng.normal(5.0, 3.0, size=(50, 40))
    out = project_gene_tokens(wide, 16)
    assert out.shape == (50, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.sqrt(np.mean(out.astype(np.float64) ** 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(out, project_gene_tokens(wide, 16))
    # PCA keeps the leading axes: their variance decreases
    variance = out.var(0)
    assert (np.diff(variance) <= 1e-6).all()
    narrow = project_gene_tokens(rng.normal(size=(20, 5)), 16)
    assert narrow.shape == (20, 16) and (narrow[:, 5:] == 0).all()


# ---- model: frozen rows stay, the others move ------------------------------------------------------
def test_frozen_rows_stay_unchanged_by_training_and_the_others_move(screen, tiny_model):
    """The acceptance test of the hybrid gene-token table."""
    table = _table(screen.var_names[::2])
    torch.manual_seed(0)
    model = px.PertTX(screen, **tiny_model, gene_token_embedding=table)
    found = _tokens(model).found.clone()
    assert found.tolist() == [i % 2 == 0 for i in range(screen.n_vars)]
    before = _vectors(model)
    model.train(**TRAIN)
    after = _vectors(model)
    assert torch.equal(after[found], before[found])  # bit-identical
    assert (after[~found] != before[~found]).any(1).all()  # every learned row moved

    model.unfreeze_gene_tokens()
    assert torch.equal(_vectors(model), after)
    model.train(**TRAIN)
    tuned = _vectors(model)
    assert (tuned != after).any(1).all()  # now every row moves

    model.freeze_gene_tokens()
    model.train(**TRAIN)
    assert torch.equal(_vectors(model)[found], tuned[found])


def test_a_model_without_a_table_is_unchanged(screen, tiny_model):
    torch.manual_seed(0)
    plain = px.PertTX(screen, **tiny_model)
    assert list(_tokens(plain).state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="no pretrained gene-token table"):
        plain.unfreeze_gene_tokens()


@pytest.mark.filterwarnings("ignore:gene_token_embedding. only:UserWarning")
def test_genes_are_matched_through_the_id_table_and_logged(screen, tiny_model, caplog):
    table = _table(["REG00", "GENE000_NEW", "GENE001", "OTHER"])
    ids = pd.DataFrame({"id": ["GENE000"], "id_type": ["alias"], "symbol": ["GENE000_NEW"]})
    with caplog.at_level(logging.INFO, logger="pertx_scvi._model"):
        model = px.PertTX(screen, **tiny_model, gene_token_embedding=table, id_table=ids)
    assert "pretrained vectors for 3 of 40 measured genes" in caplog.text
    found = _tokens(model).found.numpy()
    assert list(screen.var_names[found]) == ["REG00", "GENE000", "GENE001"]
    kept = model.init_params_["non_kwargs"]["gene_token_embedding"]
    assert list(kept.index) == ["REG00", "GENE000", "GENE001"]  # data names
    np.testing.assert_array_equal(kept.loc["GENE000"], table["GENE000_NEW"].astype(np.float32))


@pytest.mark.filterwarnings("ignore:gene_token_embedding. only:UserWarning")
def test_gene_symbols_name_the_genes(tiny_screen, tiny_model):
    adata = tiny_screen.copy()
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:05d}" for i in range(adata.n_vars)]
    px.PertTX.setup_anndata(
        adata, perturbation_key="perturbation", control_group="control", gene_symbols="symbol"
    )
    model = px.PertTX(adata, **tiny_model, gene_token_embedding=_table(["GENE005", "REG01"]))
    assert _tokens(model).n_pretrained == 2


def test_file_tables_and_frames_are_read(screen, tiny_model, tmp_path):
    frame = pd.DataFrame(_table(screen.var_names[:10], width=8)).T
    path = tmp_path / "tokens.csv"
    frame.rename_axis("gene").to_csv(path)
    from_file = px.PertTX(screen, **tiny_model, gene_token_embedding=path)
    from_frame = px.PertTX(screen, **tiny_model, gene_token_embedding=frame)
    assert _tokens(from_file).n_pretrained == 10
    torch.testing.assert_close(_tokens(from_file).pretrained, _tokens(from_frame).pretrained)


# ---- bad input -----------------------------------------------------------------------------------
def test_no_gene_found_is_an_error_naming_the_counts(screen, tiny_model):
    with pytest.raises(ValueError, match=r"none of the 40 measured genes.*\(2 genes"):
        px.PertTX(screen, **tiny_model, gene_token_embedding=_table(["A", "B"]))


def test_few_genes_found_warn(screen, tiny_model):
    with pytest.warns(UserWarning, match="only 2 of 40 measured genes"):
        px.PertTX(screen, **tiny_model, gene_token_embedding=_table(["REG00", "GENE003"]))


@pytest.mark.parametrize(
    "table, error, message",
    [
        (np.zeros((40, 4)), TypeError, "gene_token_embedding must be a DataFrame"),
        ([1, 2, 3], TypeError, "not list"),
        ("no_such_file.csv", FileNotFoundError, "neither one of"),
        ({"REG00": [1.0, 2.0], "REG01": [1.0]}, ValueError, "different lengths"),
        (pd.DataFrame(index=["REG00"]), ValueError, "no columns"),
    ],
)
def test_wrong_tables_are_refused(screen, tiny_model, table, error, message):
    with pytest.raises(error, match=message):
        px.PertTX(screen, **tiny_model, gene_token_embedding=table)


# ---- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("unfreeze", [False, True])
def test_save_load_round_trip(screen, tiny_model, tmp_path, unfreeze):
    table = _table(screen.var_names[::3], width=24)
    torch.manual_seed(0)
    model = px.PertTX(screen, **tiny_model, gene_token_embedding=table)
    if unfreeze:
        model.unfreeze_gene_tokens()
    model.train(**TRAIN)
    folder = tmp_path / "model"
    model.save(folder)
    assert (folder / "gene_token_embedding.npz").is_file()
    doc = json.loads((folder / "model.json").read_text())
    assert doc["tables"]["gene_token_embedding"] == "gene_token_embedding.npz"
    assert "gene_token_embedding" not in doc["init_params"]["non_kwargs"]

    loaded = px.PertTX.load(folder, screen)
    assert _tokens(loaded).is_frozen == (not unfreeze)
    state, reloaded = model.module.state_dict(), loaded.module.state_dict()
    assert state.keys() == reloaded.keys()
    for key in state:
        assert torch.equal(state[key].cpu(), reloaded[key].cpu()), key
    kept = model.init_params_["non_kwargs"]["gene_token_embedding"]
    pd.testing.assert_frame_equal(
        loaded.init_params_["non_kwargs"]["gene_token_embedding"], kept, check_names=False
    )
    cells = screen[screen.obs["perturbation"] == "control"][:8]
    np.testing.assert_array_equal(
        model.predict_perturbation(cells, ["REG00"], seed=0).X,
        loaded.predict_perturbation(cells, ["REG00"], seed=0).X,
    )


# ---- spectral embedding ---------------------------------------------------------------------------
def _small_graph() -> px.GeneGraph:
    edges = pd.DataFrame(
        {
            "source": ["a", "b", "c", "d", "a", "e", "x"],
            "target": ["b", "c", "d", "a", "c", "f", "y"],
            "weight": [1.0, 2.0, 1.0, 1.0, 0.5, 1.0, 1.0],
        }
    )
    return px.GeneGraph.from_edges(edges)


def test_spectral_embedding_shape_and_determinism():
    graph = _small_graph()
    emb = spectral_embedding(graph, n_components=3)
    assert emb.shape == (8, 3)
    assert list(emb.index) == sorted(graph.genes) and emb.index.name == "gene"
    assert list(emb.columns) == ["spectral_0", "spectral_1", "spectral_2"]
    assert (emb.dtypes == np.float32).all()
    np.testing.assert_allclose(np.linalg.norm(emb.to_numpy(), axis=1), 1.0, rtol=1e-5)
    pd.testing.assert_frame_equal(emb, spectral_embedding(graph, n_components=3))
    # plain Laplacian: the largest connected component only
    plain = spectral_embedding(graph, n_components=2, regularization=0)
    assert list(plain.index) == ["a", "b", "c", "d"]
    # more components than the graph has: zero columns
    wide = spectral_embedding(graph, n_components=20)
    assert wide.shape == (8, 20) and (wide.iloc[:, 7:] == 0).all().all()


def test_spectral_embedding_sparse_solver_is_deterministic():
    """Above the dense size the eigensolver is ARPACK with a seeded start."""
    rng = np.random.default_rng(0)
    n = 1200
    source = rng.integers(0, n, 6000)
    target = rng.integers(0, n, 6000)
    keep = source != target
    edges = pd.DataFrame(
        {
            "source": [f"g{i}" for i in source[keep]],
            "target": [f"g{i}" for i in target[keep]],
            "weight": rng.uniform(0.1, 1.0, keep.sum()),
        }
    )
    graph = px.GeneGraph.from_edges(edges)
    first = spectral_embedding(graph, n_components=8)
    assert first.shape == (graph.n_genes, 8)
    pd.testing.assert_frame_equal(first, spectral_embedding(graph, n_components=8))


def test_spectral_embedding_errors():
    with pytest.raises(ValueError, match="n_components"):
        spectral_embedding(_small_graph(), n_components=0)
    with pytest.raises(ValueError, match="regularization"):
        spectral_embedding(_small_graph(), regularization=-1)
    with pytest.raises(TypeError, match="GeneGraph"):
        spectral_embedding(pd.DataFrame())


def test_spectral_table_as_gene_tokens(screen, tiny_model):
    edges = pd.DataFrame(
        {"source": screen.var_names[:12], "target": screen.var_names[1:13], "weight": 1.0}
    )
    table = spectral_embedding(px.GeneGraph.from_edges(edges), n_components=8)
    model = px.PertTX(screen, **tiny_model, gene_token_embedding=table)
    assert _tokens(model).n_pretrained == 13


@pytest.mark.parametrize("name", ["go", "string"])
def test_built_in_tables_are_d_model_wide(name, data_dir, monkeypatch):
    from pertx_scvi._model import load_gene_token_source

    monkeypatch.setenv("PERTX_DATA_DIR", str(data_dir))
    table = load_gene_token_source(name, 16)
    assert table.shape[1] == 16 and len(table) > 15_000
    assert {"STAT1", "IRF1", "JAK2"} <= set(table.index)
    assert np.isfinite(table.to_numpy()).all()
