"""Out-of-core training: backed AnnData (sparse CSR or dense on disk) is set up, trained on and
predicted from without reading the whole matrix; the batch order and pairing are functions of
(seed, epoch, batch number); rank shards."""

import hashlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pertx_scvi as px
from pertx_scvi.data import (
    BatchKey,
    BlockBatchSampler,
    ControlSampler,
    PairedBatchDataset,
    _rows,
    read_rows,
)

SETUP = {"perturbation_key": "perturbation", "control_group": "control"}


def _write(adata: ad.AnnData, path, sparse: bool = True, **values) -> str:
    """``adata`` written to ``path`` (X sparse CSR or dense), with ``values`` set at
    ``(row, column)`` keys first (e.g. a NaN)."""
    adata = adata.copy()
    x = _dense(adata.X)
    for where, value in values.items():
        row, column = map(int, where.split("_")[1:])
        x[row, column] = value
    adata.X = sp.csr_matrix(x) if sparse else x
    adata.write_h5ad(path)
    return str(path)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


@pytest.fixture
def backed(tmp_path, tiny_screen):
    """``backed(sparse=True)``: the tiny screen read back with ``backed="r"``."""
    files = []

    def open_backed(sparse: bool = True, **values):
        name = f"screen_{len(files)}.h5ad"
        adata = ad.read_h5ad(_write(tiny_screen, tmp_path / name, sparse, **values), backed="r")
        files.append(adata)
        return adata

    yield open_backed
    for adata in files:
        adata.file.close()


@pytest.fixture
def reads(monkeypatch):
    """Records the shape of every read of an h5py dataset (name, number of values)."""
    seen: list[tuple[str, int]] = []
    original = h5py.Dataset.__getitem__

    def recorded(self, index):
        out = original(self, index)
        seen.append((self.name, int(np.size(out))))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recorded)
    return seen


def _largest_matrix_read(seen) -> int:
    # indptr (n_obs + 1 offsets) is read whole by anndata: its size is the cells', not the
    # values'; data, indices and dense X are the matrix.
    return max((n for name, n in seen if not name.endswith("indptr")), default=0)


# ---- setup on backed data ----------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [True, False])
def test_setup_on_backed_matrix_keeps_it_on_disk(backed, sparse):
    adata = backed(sparse=sparse)
    kind, written = type(adata.X), hashlib.sha256(Path(adata.filename).read_bytes()).digest()
    px.PertTX.setup_anndata(adata, **SETUP)
    assert type(adata.X) is kind and adata.isbacked  # registered as it is, not loaded
    model = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2, d_hidden=32)
    assert hashlib.sha256(Path(adata.filename).read_bytes()).digest() == written
    cells = model._registered_cells()
    assert cells.is_backed
    expected = ad.read_h5ad(adata.filename).X
    expected = expected.toarray() if sp.issparse(expected) else expected
    np.testing.assert_array_equal(cells.dense(np.array([5, 0, 5, 90])), expected[[5, 0, 5, 90]])


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "1 NaN or infinite"), (-3.0, "negative values \\(min -3\\)"), (np.inf, "1 NaN")],
)
def test_bad_values_on_backed_matrix_are_named(backed, sparse, value, message):
    adata = backed(sparse=sparse, at_100_7=value)
    with pytest.raises(ValueError, match=f"adata.X contains {message}"):
        px.PertTX.setup_anndata(adata, **SETUP)


def test_non_integer_backed_counts_are_named_at_model_creation(backed):
    adata = backed(sparse=True, at_3_2=0.5)
    px.PertTX.setup_anndata(adata, **SETUP)  # setup takes any finite non-negative values
    with pytest.raises(ValueError, match=r"adata.X contains non-integer values \(e.g. 0.5\)"):
        px.PertTX(adata)


def test_backed_layer_is_checked_and_named(tmp_path, tiny_screen):
    path = _write(tiny_screen, tmp_path / "layer.h5ad", at_9_1=-1.0)
    with h5py.File(path, "r") as file:
        on_disk = ad.io.sparse_dataset(file["X"])
        adata = ad.AnnData(
            obs=tiny_screen.obs.copy(), var=tiny_screen.var.copy(), layers={"counts": on_disk}
        )
        with pytest.raises(ValueError, match=r"adata.layers\['counts'\] contains negative"):
            px.PertTX.setup_anndata(adata, layer="counts", **SETUP)
    path = _write(tiny_screen, tmp_path / "good_layer.h5ad")
    with h5py.File(path, "r") as file:
        on_disk = ad.io.sparse_dataset(file["X"])
        adata = ad.AnnData(
            obs=tiny_screen.obs.copy(), var=tiny_screen.var.copy(), layers={"counts": on_disk}
        )
        px.PertTX.setup_anndata(adata, layer="counts", **SETUP)
        cells = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2)._registered_cells()
        assert cells.is_backed
        torch.testing.assert_close(
            cells.dense(np.arange(5)), torch.from_numpy(_dense(tiny_screen.X[:5]))
        )


def test_backed_csc_is_a_clear_error(tmp_path, tiny_screen):
    adata = tiny_screen.copy()
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csc.h5ad")
    adata = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.raises(ValueError, match="adata.X is a backed CSC matrix.*CSR"):
        px.PertTX.setup_anndata(adata, **SETUP)
    adata.file.close()


@pytest.mark.parametrize("sparse", [True, False])
def test_setup_and_model_read_the_backed_matrix_in_bounded_chunks(
    tmp_path, tiny_screen, reads, monkeypatch, sparse
):
    """With the read bound lowered to 400 values, setup, the count checks of the model and a
    training epoch never read more than scvi-tools' look at the first 100 rows at once
    (4,000 values): a seventh of the 700 cells x 40 genes."""
    monkeypatch.setattr(_rows, "MAX_READ_VALUES", 400)
    screen = ad.concat([tiny_screen] * 5)
    screen.obs_names_make_unique()
    adata = ad.read_h5ad(_write(screen, tmp_path / "big.h5ad", sparse), backed="r")
    reads.clear()
    px.PertTX.setup_anndata(adata, **SETUP)
    model = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2, d_hidden=32)
    bound = 100 * adata.n_vars
    assert adata.n_obs * adata.n_vars >= 7 * bound
    assert 0 < _largest_matrix_read(reads) <= bound
    # every value was checked (in reads of at most 400 values, or scvi-tools' 100 rows)
    assert sum(n for name, n in reads if name.endswith(("X", "data"))) >= 0.5 * bound
    reads.clear()
    model.train(max_epochs=1, enable_progress_bar=False)
    assert 0 < _largest_matrix_read(reads) <= 400
    adata.file.close()


# ---- training and prediction -------------------------------------------------------------------
def test_backed_model_trains_and_predicts(backed, tiny_model):
    adata = backed(sparse=True)
    px.PertTX.setup_anndata(adata, **SETUP)
    model = px.PertTX(adata, **tiny_model)
    model.train(max_epochs=2, enable_progress_bar=False)
    losses = model.history["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert len(losses) == 2 and np.isfinite(losses).all()
    controls = adata[np.flatnonzero(adata.obs["perturbation"] == "control")[:8]].to_memory()
    prediction = model.predict_perturbation(controls, ["REG01"])
    assert prediction.shape == (8, adata.n_vars)
    latent = model.get_latent_representation()
    assert latent.shape[0] == adata.n_obs and np.isfinite(latent).all()


def test_backed_training_equals_in_memory_training(backed, tiny_screen, tiny_model):
    """One code path: with the same blocks, seed and torch seed, an epoch on the backed file and
    one on the same matrix in memory give the same losses and weights."""
    in_memory = tiny_screen.copy()
    in_memory.X = sp.csr_matrix(in_memory.X, dtype=np.float32)
    models = []
    for adata in (backed(sparse=True), in_memory):
        px.PertTX.setup_anndata(adata, **SETUP)
        torch.manual_seed(0)
        model = px.PertTX(adata, **tiny_model)
        model.train(
            max_epochs=1,
            batch_size=16,
            enable_progress_bar=False,
            seed=3,
            datasplitter_kwargs={"block_size": 32, "window_blocks": 2},
        )
        models.append(model)
    on_disk, in_ram = (m.history["train_loss"]["train_loss"].to_numpy(float) for m in models)
    np.testing.assert_allclose(on_disk, in_ram, rtol=1e-6)
    for (name, a), b in zip(
        models[0].module.state_dict().items(), models[1].module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize(
    ("option", "value"), [("block_size", 0), ("window_blocks", 0), ("max_cached_controls", 0)]
)
def test_bad_loading_options_are_errors_before_training(tiny_screen, option, value):
    adata = tiny_screen.copy()
    px.PertTX.setup_anndata(adata, **SETUP)
    model = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2, d_hidden=32)
    with pytest.raises(ValueError, match=f"{option} must be at least 1"):
        model.train(max_epochs=1, datasplitter_kwargs={option: value})


def test_epochs_reach_the_sampler(backed, tiny_model, monkeypatch):
    epochs = []
    original = BlockBatchSampler.set_epoch

    def recorded(self, epoch):
        if self.shuffle:
            epochs.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(BlockBatchSampler, "set_epoch", recorded)
    adata = backed(sparse=True)
    px.PertTX.setup_anndata(adata, **SETUP)
    px.PertTX(adata, **tiny_model).train(max_epochs=2, enable_progress_bar=False)
    assert epochs == [0, 1]


def test_registered_cells_of_other_gene_order_read_per_batch(
    tmp_path, tiny_screen, reads, monkeypatch
):
    """Source cells on disk with the genes in another order and extra genes: columns put in
    training order per batch, the file's matrix read in bounded pieces, never whole."""
    monkeypatch.setattr(_rows, "MAX_READ_VALUES", 200)
    train = tiny_screen.copy()
    px.PertTX.setup_anndata(train, **SETUP)
    model = px.PertTX(train, d_model=16, n_layers=1, n_heads=2, d_hidden=32)
    rng = np.random.default_rng(0)
    order = rng.permutation(train.n_vars)
    extra = rng.poisson(2.0, (train.n_obs, 5)).astype(np.float32)
    other = ad.AnnData(
        X=sp.csr_matrix(np.hstack([_dense(train.X)[:, order], extra])),
        obs=train.obs[["perturbation"]].copy(),
        var={"name": [*train.var_names[order], *[f"EXTRA{i}" for i in range(5)]]},
    )
    other.var_names = other.var["name"].to_numpy()
    other.write_h5ad(tmp_path / "other.h5ad")
    adata = ad.read_h5ad(tmp_path / "other.h5ad", backed="r")
    reads.clear()
    cells = model._registered_cells(adata)
    assert cells.is_backed and cells.columns is not None
    wanted = np.array([3, 1, 70, 3])
    expected = model._registered_cells(train).dense(wanted)
    torch.testing.assert_close(cells.dense(wanted), expected)
    assert 0 < _largest_matrix_read(reads) <= 200 < other.X.nnz // 10
    # Aligned for metrics (loaded, as metrics need it): in row chunks, columns reordered.
    aligned = model._aligned_adata(adata)
    np.testing.assert_array_equal(_dense(aligned.X), _dense(train.X))
    assert 0 < _largest_matrix_read(reads) <= 200
    adata.file.close()


# ---- the sampler -------------------------------------------------------------------------------
def _epoch(sampler: BlockBatchSampler, epoch: int) -> list[BatchKey]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_blocks_cover_every_item_once_read_contiguously():
    sampler = BlockBatchSampler(1000, 32, block_size=50, window_blocks=3, seed=1)
    keys = _epoch(sampler, 0)
    order = np.concatenate([k.positions for k in keys])
    np.testing.assert_array_equal(np.sort(order), np.arange(1000))
    assert [k.number for k in keys] == list(range(len(keys))) and len(keys) == len(sampler) == 32
    for key in keys:
        assert 1 <= len(key.windows) <= 2 and all(len(w) <= 3 for w in key.windows)
        ranges = np.concatenate(key.windows)
        assert (ranges[:, 1] - ranges[:, 0] <= 50).all() and (ranges[:, 0] % 50 == 0).all()
        inside = (key.positions[:, None] >= ranges[:, 0]) & (key.positions[:, None] < ranges[:, 1])
        assert inside.any(1).all()  # every item of a batch is in the window read for it
        assert len(ranges) <= 2 * 3
    # a window's items are its blocks' items: consecutive windows of 150 items
    first_window = order[:150]
    assert len(np.unique(first_window // 50)) == 3
    # not the items' own order, and a new order each epoch, the same for a new sampler
    assert not np.array_equal(order, np.arange(1000))
    again = np.concatenate([k.positions for k in _epoch(sampler, 1)])
    assert not np.array_equal(order, again)
    fresh = BlockBatchSampler(1000, 32, block_size=50, window_blocks=3, seed=1)
    np.testing.assert_array_equal(np.concatenate([k.positions for k in _epoch(fresh, 1)]), again)
    other_seed = BlockBatchSampler(1000, 32, block_size=50, window_blocks=3, seed=2)
    assert not np.array_equal(np.concatenate([k.positions for k in other_seed]), order)


def test_unshuffled_and_unblocked_orders():
    sequential = BlockBatchSampler(100, 30, block_size=40, shuffle=False)
    keys = list(sequential)
    np.testing.assert_array_equal(np.concatenate([k.positions for k in keys]), np.arange(100))
    assert [len(k.positions) for k in keys] == [30, 30, 30, 10]
    random = BlockBatchSampler(100, 30, seed=0, drop_last=True)
    keys = list(random)
    assert len(keys) == 3 and all(k.windows is None for k in keys)
    assert len(np.unique(np.concatenate([k.positions for k in keys]))) == 90


def test_rank_shards_are_disjoint_equal_and_from_one_order():
    full = _epoch(BlockBatchSampler(1000, 32, block_size=64, seed=5), 2)
    shards = []
    for rank in range(3):
        sampler = BlockBatchSampler(1000, 32, block_size=64, seed=5, num_replicas=3, rank=rank)
        shards.append(_epoch(sampler, 2))
        assert len(shards[-1]) == len(sampler) == len(full) // 3
    numbers = [[k.number for k in shard] for shard in shards]
    assert not set(numbers[0]) & set(numbers[1]) and not set(numbers[1]) & set(numbers[2])
    for shard in shards:
        for key in shard:
            np.testing.assert_array_equal(key.positions, full[key.number].positions)
    with pytest.raises(ValueError, match="rank"):
        BlockBatchSampler(10, 2, num_replicas=2, rank=2)


def test_pairing_is_a_function_of_seed_epoch_and_batch(tiny_screen, tiny_model):
    adata = tiny_screen.copy()
    px.PertTX.setup_anndata(adata, **SETUP)
    model = px.PertTX(adata, **tiny_model)
    cells = model._registered_cells()
    controls = np.flatnonzero(np.isin(cells.label_codes, model._control_codes()))
    sampler = ControlSampler(controls, cells.context)
    targets = np.arange(adata.n_obs)
    key = BatchKey(epoch=1, number=4, positions=np.arange(40))
    first = PairedBatchDataset(cells, targets, sampler, seed=7)[key]
    again = PairedBatchDataset(cells, targets, sampler, seed=7)
    again[np.arange(10)]  # direct access draws from the dataset's own generator in between
    torch.testing.assert_close(again[key]["source_x"], first["source_x"])
    for other in (BatchKey(2, 4, key.positions), BatchKey(1, 5, key.positions)):
        assert not torch.equal(again[other]["source_x"], first["source_x"])
    torch.testing.assert_close(again[BatchKey(2, 4, key.positions)]["target_x"], first["target_x"])


def test_sources_come_from_the_cached_controls_of_their_context(backed, tiny_model):
    adata = backed(sparse=True)
    px.PertTX.setup_anndata(adata, **SETUP)
    model = px.PertTX(adata, **tiny_model)
    datamodule = model._make_datamodule(validation_size=0.2)
    cells, pairing = datamodule.cells, datamodule.sampler
    assert datamodule.block_size == 1024  # blocks by default on disk
    is_control = np.isin(cells.label_codes, model._control_codes())
    np.testing.assert_array_equal(cells.cache.positions, np.flatnonzero(is_control))
    drawn = pairing.draw(datamodule.train_idx, np.random.default_rng(0))
    assert is_control[drawn].all()
    np.testing.assert_array_equal(cells.context[drawn], cells.context[datamodule.train_idx])
    controls = np.flatnonzero(is_control)
    capped = pairing.capped(5, seed=0)
    assert len(controls) > 5 and len(capped.control_cells) == 5
    assert set(capped.control_cells) <= set(controls)


def test_read_rows_spans_and_columns(monkeypatch):
    monkeypatch.setattr(_rows, "GAP_BYTES", 32 * 3 * 4)  # 32 rows of 3 float32
    matrix = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)

    class Lazy:  # sliced only by contiguous row ranges, like a file
        shape, dtype = matrix.shape, matrix.dtype
        slices: list = []

        def __getitem__(self, index):
            assert isinstance(index, slice)
            self.slices.append((index.start, index.stop))
            return matrix[index]

    lazy = Lazy()
    positions = np.array([0, 1, 5, 100, 101, 199])
    np.testing.assert_array_equal(
        read_rows(lazy, positions, np.array([2, 0])), matrix[positions][:, [2, 0]]
    )
    assert lazy.slices == [(0, 6), (100, 102), (199, 200)]
