"""Model folders: tensors and plain data only, checked on load, saved atomically."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

import pertx_scvi as px
from pertx_scvi._model_files import LegacyModelError, ModelFileError

SIM = {
    "n_genes": 40,
    "n_regulators": 6,
    "n_modules": 2,
    "n_control_cells": 60,
    "n_cells_per_perturbation": 20,
    "n_combinations": 2,
    "targets_per_module": 5,
    "seed": 0,
}
LABELS = ["REG00", "REG00+REG02"]


@pytest.fixture(scope="module")
def screen():
    adata, _, network = px.datasets.simulate(**SIM)
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata, network


TRAIN = {"max_epochs": 1, "batch_size": 32, "holdout_perturbations": ["REG01"], "seed": 0}


@pytest.fixture(scope="module")
def trained(screen, tmp_path_factory, tiny_model, train_model):
    """A tiny trained model and its saved folder (with the AnnData)."""
    adata, _ = screen
    model = train_model(adata, tiny_model, **TRAIN)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder, save_anndata=True)
    return model, adata, folder


def _controls(adata):
    return adata[adata.obs["perturbation"] == "control"][:12]


def _predict(model, cells, labels=LABELS):
    return model.predict_perturbation(cells, labels, seed=0)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


class _Payload:
    """Creates ``marker`` when unpickled (as a malicious checkpoint would run any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- round trips ---------------------------------------------------------------------------------
def test_round_trip_gives_identical_outputs(trained):
    model, adata, folder = trained
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(
        [
            "adata.h5ad",
            "history.json",
            "manifest.json",
            "model.json",
            "registry.json",
            "weights.safetensors",
        ]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    loaded = px.PertTX.load(folder, adata)
    cells = _controls(adata)
    before, after = _predict(model, cells), _predict(loaded, cells)
    np.testing.assert_array_equal(before.X, after.X)
    np.testing.assert_array_equal(
        before.layers["counts"].toarray(), after.layers["counts"].toarray()
    )
    np.testing.assert_array_equal(
        model.get_latent_representation(cells), loaded.get_latent_representation(cells)
    )
    assert loaded.is_trained_ and loaded.holdout_perturbations_ == ["REG01"]
    assert loaded.history.keys() == model.history.keys()
    pd.testing.assert_frame_equal(loaded.history["train_loss"], model.history["train_loss"])
    np.testing.assert_array_equal(loaded.train_indices_, model.train_indices_)
    assert loaded.registry_["setup_args"] == model.registry_["setup_args"]
    # without adata: the saved one
    np.testing.assert_array_equal(_predict(px.PertTX.load(folder), cells).X, before.X)


def test_genes_in_another_order_are_matched_by_name(trained):
    model, adata, folder = trained
    order = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, order].copy()
    loaded = px.PertTX.load(folder, shuffled)
    cells = _controls(shuffled)
    before, after = _predict(model, _controls(adata)), _predict(loaded, cells)
    after = after[:, before.var_names]
    np.testing.assert_array_equal(before.X, after.X)
    with pytest.raises(ValueError, match=r"lacks 5 of the 40 genes .*'REG00'"):
        px.PertTX.load(folder, adata[:, 5:].copy())


def test_graph_file_travels_with_the_model(screen, tmp_path, tiny_model, train_model):
    """Built from a graph file and an id table (one gene renamed): saves and loads once the file
    is gone.

    REG01 is held out (never trained): it and GENE001 are embedded through the graph only.
    """
    adata, network = screen
    edges = network.assign(strength=network["weight"].abs())
    edges = edges.replace({"source": {"REG01": "REG01_NEW"}, "target": {"REG01": "REG01_NEW"}})
    graph_file = tmp_path / "graph.csv.gz"
    px.GeneGraph.from_edges(edges, weight="strength", sign="weight").write(graph_file)
    ids = pd.DataFrame({"id": ["REG01"], "id_type": ["alias"], "symbol": ["REG01_NEW"]})
    model = train_model(
        adata, tiny_model, {"gene_graph": str(graph_file), "id_table": ids}, **TRAIN
    )
    assert model.graph_setup_.renamed == {"REG01": "REG01_NEW"}
    labels = ["REG01", "REG01+REG02", "GENE001"]
    before = _predict(model, _controls(adata), labels)
    graph_file.rename(tmp_path / "moved.csv.gz")
    model.save(tmp_path / "graph_model")  # the model holds the graph, not its path
    loaded = px.PertTX.load(tmp_path / "graph_model", adata)
    np.testing.assert_array_equal(_predict(loaded, _controls(adata), labels).X, before.X)
    assert loaded.graph_setup_.renamed == {"REG01": "REG01_NEW"}
    assert sorted(p.name for p in (tmp_path / "graph_model").glob("*.npz")) == [
        "gene_graph_0.npz",
        "id_table.npz",
    ]


def test_backup_url_fetches_the_folder(trained, tmp_path):
    model, adata, folder = trained
    target = tmp_path / "fetched"
    loaded = px.PertTX.load(target, adata, backup_url=folder.as_uri())
    assert (target / "manifest.json").is_file()
    np.testing.assert_array_equal(
        _predict(loaded, _controls(adata)).X, _predict(model, _controls(adata)).X
    )


# ---- code in files -------------------------------------------------------------------------------
def test_legacy_pickle_is_refused_without_running_it(trained, tmp_path):
    _, adata, _ = trained
    marker = tmp_path / "payload_ran"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"attr_dict": _Payload(marker)}, legacy / "model.pt")
    with pytest.raises(LegacyModelError, match=r"legacy format: a pickle.*allow_pickle=True"):
        px.PertTX.load(legacy, adata)
    assert not marker.exists()
    # the payload is real: unpickling it does run it
    torch.load(legacy / "model.pt", weights_only=False)
    assert marker.exists()


def test_pickle_in_place_of_the_weights_is_refused(trained, tmp_path):
    _, adata, folder = trained
    copy = _copy(folder, tmp_path)
    marker = tmp_path / "payload_ran"
    weights = copy / "weights.safetensors"
    payload = pickle.dumps(_Payload(marker))  # padded to the size of the real file
    weights.write_bytes(payload + b"\0" * (weights.stat().st_size - len(payload)))
    with pytest.raises(ModelFileError, match=r"weights\.safetensors is altered"):
        px.PertTX.load(copy, adata)
    # even with a manifest rewritten to match, the weights are not unpickled
    manifest = json.loads((copy / "manifest.json").read_text())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest["files"]["weights.safetensors"] = {"sha256": digest, "size": weights.stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        px.PertTX.load(copy, adata)
    assert not marker.exists()


def test_legacy_model_loads_with_allow_pickle_and_a_warning(trained, tmp_path):
    model, adata, _ = trained
    scvi.model.base.BaseModelClass.save(model, tmp_path / "legacy")
    with pytest.raises(LegacyModelError):
        px.PertTX.load(tmp_path / "legacy", adata)
    with pytest.warns(UserWarning, match="legacy pickle"):
        loaded = px.PertTX.load(tmp_path / "legacy", adata, allow_pickle=True)
    np.testing.assert_array_equal(
        _predict(loaded, _controls(adata)).X, _predict(model, _controls(adata)).X
    )


# ---- damaged files -------------------------------------------------------------------------------
def test_flipped_bytes_are_named(trained, tmp_path):
    _, adata, folder = trained
    copy = _copy(folder, tmp_path)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"copy/weights\.safetensors is altered"):
        px.PertTX.load(copy, adata)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "is truncated"),
        (lambda p: p.write_bytes(b""), r"is truncated: 0 of \d+ bytes"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["truncated", "empty", "deleted"],
)
def test_truncated_empty_or_missing_files_are_named(trained, tmp_path, damage, message):
    _, adata, folder = trained
    copy = _copy(folder, tmp_path)
    damage(copy / "weights.safetensors")
    with pytest.raises(ModelFileError, match=rf"weights\.safetensors {message}"):
        px.PertTX.load(copy, adata)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "manifest .*manifest.json is empty"), (b"{not json", "manifest .* is unreadable")],
    ids=["empty", "unreadable"],
)
def test_empty_or_unreadable_manifest_is_named(trained, tmp_path, content, message):
    _, adata, folder = trained
    copy = _copy(folder, tmp_path)
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        px.PertTX.load(copy, adata)


# ---- atomic saves --------------------------------------------------------------------------------
def test_overwrite_needs_the_flag_and_keeps_other_files(trained, tmp_path):
    model, adata, folder = trained
    copy = _copy(folder, tmp_path)
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(ModelFileError, match="already exists: pass overwrite=True"):
        model.save(copy)
    model.save(copy, overwrite=True)
    assert (copy / "notes.txt").read_text() == "mine"
    assert not (copy / "adata.h5ad").exists()  # the old model's file went with it
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # nothing left beside it
    px.PertTX.load(copy, adata)


def test_load_names_a_model_left_aside_by_an_interrupted_overwrite(trained, tmp_path):
    """The state after a kill between 'old model aside' and 'new model in'."""
    _, adata, folder = trained
    aside = tmp_path / ".copy.replaced-1234abcd"
    _copy(folder, tmp_path).rename(aside)
    with pytest.raises(ModelFileError, match=r"previous model at .*\.copy\.replaced-1234abcd"):
        px.PertTX.load(tmp_path / "copy", adata)
    px.PertTX.load(aside, adata)


def test_save_killed_midway_leaves_the_old_model(trained, tmp_path):
    model, adata, folder = trained
    copy = _copy(folder, tmp_path)
    code = f"""
import os
import pertx_scvi as px
from pertx_scvi import _model_files

model = px.PertTX.load({str(copy)!r})
write = _model_files._write_file

def write_then_die(path, writer):
    write(path, writer)
    os._exit(1)

_model_files._write_file = write_then_die
model.save({str(copy)!r}, overwrite=True)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr[-2000:]
    (partial,) = tmp_path.glob(".copy.saving-*")  # the half-written save, beside the model
    assert len(list(partial.iterdir())) == 1
    loaded = px.PertTX.load(copy, adata)
    np.testing.assert_array_equal(
        _predict(loaded, _controls(adata)).X, _predict(model, _controls(adata)).X
    )
