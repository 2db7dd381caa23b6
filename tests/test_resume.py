"""Resumable training: an interrupted run resumed from its checkpoint ends as an uninterrupted
one (weights and full history), checkpoints hold tensors and plain data only, and a checkpoint
of another model or setup is a clear error."""

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import pertx_scvi as px
from pertx_scvi import TrainingInterrupted
from pertx_scvi.train._checkpoint import (
    CHECKPOINT_FILE,
    read_checkpoint,
    write_checkpoint,
)

# Dropout on, so that the restored random generators matter (as does the masking of MLM).
SIZE = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_hidden": 32, "dropout": 0.1}
TRAIN = {
    "max_epochs": 4,
    "batch_size": 16,
    "validation_size": 0.2,
    "enable_progress_bar": False,
}


class _StopAtEpoch(Callback):
    """Ctrl-C at the start of epoch ``epoch`` (0-based), i.e. after ``epoch`` epochs."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class _Epochs(Callback):
    """Records the epochs that train."""

    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


@pytest.fixture(scope="module")
def screen(tiny_simulation):
    adata = tiny_simulation[0].copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata


def _model(adata, size=SIZE):
    torch.manual_seed(0)  # the same initial weights every time
    return px.PertTX(adata, **size)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


@pytest.fixture(scope="module")
def runs(screen, tmp_path_factory):
    """An uninterrupted 4-epoch run, and the same run interrupted after epoch 2 with its
    checkpoint folder."""
    full = _model(screen)
    torch.manual_seed(1)
    full.train(**TRAIN)
    folder = tmp_path_factory.mktemp("interrupted")
    interrupted = _model(screen)
    torch.manual_seed(1)
    with pytest.raises(TrainingInterrupted, match="after 2 of 4 epochs"):
        interrupted.train(checkpoint_dir=folder, callbacks=[_StopAtEpoch(2)], **TRAIN)
    return {
        "weights": _weights(full),
        "history": full.history,
        "folder": folder,
        "interrupted": interrupted,
        "interrupted_history": interrupted.history,
    }


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "checkpoint")


def test_resumed_run_ends_as_an_uninterrupted_run(screen, runs, tmp_path):
    assert (runs["folder"] / CHECKPOINT_FILE).is_file()
    assert len(runs["interrupted_history"]["train_loss"]) == 2
    resumed = _model(screen)
    torch.manual_seed(123)  # the checkpoint's generator states replace this one
    epochs = _Epochs()
    resumed.train(
        checkpoint_dir=_copy(runs["folder"], tmp_path), resume=True, callbacks=[epochs], **TRAIN
    )
    assert epochs.epochs == [2, 3]  # only the epochs the interruption left
    assert resumed.is_trained_
    weights = _weights(resumed)
    assert weights.keys() == runs["weights"].keys()
    for name, value in runs["weights"].items():
        torch.testing.assert_close(weights[name], value, msg=name)
    history = resumed.history
    assert history.keys() == runs["history"].keys()
    for name, frame in runs["history"].items():
        assert list(history[name].index) == [0, 1, 2, 3]
        pd.testing.assert_frame_equal(history[name], frame)


def test_the_interrupted_model_itself_resumes(runs, tmp_path):
    # As in a notebook: the model left by TrainingInterrupted (in eval mode) trains on.
    model = runs["interrupted"]
    model.train(checkpoint_dir=_copy(runs["folder"], tmp_path), resume=True, **TRAIN)
    for name, value in runs["weights"].items():
        torch.testing.assert_close(_weights(model)[name], value, msg=name)
    assert list(model.history["train_loss"].index) == [0, 1, 2, 3]


def test_resume_never_unpickles(screen, runs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    resumed = _model(screen)
    resumed.train(checkpoint_dir=_copy(runs["folder"], tmp_path), resume=True, **TRAIN)
    assert len(resumed.history["train_loss"]) == 4


def test_a_finished_run_resumes_to_itself(screen, tmp_path):
    first = _model(screen)
    first.train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 2})
    again = _model(screen)
    epochs = _Epochs()
    again.train(
        checkpoint_dir=tmp_path, resume=True, callbacks=[epochs], **{**TRAIN, "max_epochs": 2}
    )
    assert epochs.epochs == []
    for name, value in _weights(first).items():
        torch.testing.assert_close(_weights(again)[name], value, msg=name)
    for name, frame in first.history.items():
        pd.testing.assert_frame_equal(again.history[name], frame)
    with pytest.warns(UserWarning, match="replaced at the end of the first epoch"):
        _model(screen).train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 1})


def test_resume_errors(screen, runs, tmp_path):
    folder = _copy(runs["folder"], tmp_path)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        _model(screen).train(resume=True, **TRAIN)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        _model(screen).train(checkpoint_dir=tmp_path / "empty", resume=True, **TRAIN)
    with pytest.raises(ValueError, match=r"max_epochs: 4 in the checkpoint, 6 now"):
        _model(screen).train(checkpoint_dir=folder, resume=True, **{**TRAIN, "max_epochs": 6})
    with pytest.raises(ValueError, match="batch_size"):
        _model(screen).train(checkpoint_dir=folder, resume=True, **{**TRAIN, "batch_size": 8})
    with pytest.raises(ValueError, match="parameters of other shapes"):
        _model(screen, {**SIZE, "d_model": 8, "d_hidden": 16}).train(
            checkpoint_dir=folder, resume=True, **TRAIN
        )
    (folder / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        _model(screen).train(checkpoint_dir=folder, resume=True, **TRAIN)


def test_checkpoint_files_keep_tensors_and_plain_data(tmp_path):
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    checkpoint = {
        "state_dict": {"a": weight, "tied": weight, "view": weight[:, 1]},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []}],
        "rng": (3, tuple(range(5)), None),
        "numpy": np.arange(4, dtype=np.uint32),
        "values": [float("inf"), 1.5, True, "text", None],
        "history": pd.DataFrame({"loss": np.array([1.0, 2.0], dtype=object)}),
        "bits": torch.tensor([1, 0, 255], dtype=torch.uint8),
    }
    path = tmp_path / "c.safetensors"
    write_checkpoint(checkpoint, path)
    back = read_checkpoint(path)
    torch.testing.assert_close(back["state_dict"]["view"], weight[:, 1])
    assert back["optimizer_states"][0]["state"][0]["step"].item() == 3.0
    assert back["rng"] == (3, (0, 1, 2, 3, 4), None)
    assert back["numpy"].dtype == np.uint32 and back["values"][0] == float("inf")
    assert back["bits"].dtype == torch.uint8 and back["values"][1:] == [1.5, True, "text", None]
    pd.testing.assert_frame_equal(back["history"], checkpoint["history"])
    with pytest.raises(TypeError, match="object"):
        write_checkpoint({"callback": object()}, path)
