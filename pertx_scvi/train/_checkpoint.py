"""Resumable training: Lightning checkpoints as safetensors + JSON (nothing pickled), and the
state Lightning does not keep (global random generators, the history so far)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from .._model_files import from_json, to_json

CHECKPOINT_FILE = "last.safetensors"
"""File name of the checkpoint that :meth:`PertTX.train <pertx_scvi.PertTX.train>` keeps in
its ``checkpoint_dir`` (the last finished epoch's; each epoch replaces it)."""

_FORMAT, _FORMAT_VERSION = "pertx-checkpoint", 1
_TENSOR, _ITEMS = "__tensor__", "__items__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or from another model or training setup."""


# ---- the checkpoint dictionary as tensors + plain data -----------------------------------------
def _pack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` with every tensor moved to ``tensors`` (replaced by its name) and dictionaries
    with keys other than text (an optimiser's parameter numbers) as lists of pairs."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        # clone: safetensors refuses tensors that share storage (tied or viewed weights)
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _pack(v, tensors) for k, v in value.items()}
        return {_ITEMS: [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        packed = [_pack(v, tensors) for v in value]
        return tuple(packed) if isinstance(value, tuple) else packed
    return value


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_pack` (after :func:`from_json`)."""
    if isinstance(value, dict):
        if len(value) == 1 and _TENSOR in value:
            return tensors[value[_TENSOR]]
        if len(value) == 1 and _ITEMS in value:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value[_ITEMS]}
        return {k: _unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if isinstance(value, tuple):
        return tuple(_unpack(v, tensors) for v in value)
    return value


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a Lightning checkpoint dictionary as one safetensors file: the tensors, and the
    rest of the structure as JSON in the file's metadata; written beside ``path`` and renamed
    into place (a process killed while writing leaves the previous checkpoint)."""
    tensors: dict[str, torch.Tensor] = {}
    _write_packed(_pack(checkpoint, tensors), tensors, Path(path))


def _write_packed(packed: Any, tensors: dict[str, torch.Tensor], target: Path) -> None:
    from safetensors.torch import save

    structure = to_json(packed, "checkpoint")
    metadata = {
        "format": _FORMAT,
        "format_version": str(_FORMAT_VERSION),
        "structure": json.dumps(structure, separators=(",", ":"), allow_nan=False),
    }
    data = save(tensors, metadata=metadata)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint` (tensors on the CPU; nothing is
    unpickled).

    Raises
    ------
    CheckpointError
        When the file is missing, truncated or not a checkpoint of this format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    structure = _structure(path, metadata)
    try:
        return _unpack(structure, tensors)
    except KeyError as exc:
        raise CheckpointError(f"{path} holds an unreadable checkpoint ({exc!r})") from exc


def _structure(path: Path, metadata: dict[str, str]) -> Any:
    """The checkpoint's plain structure from the file's metadata, its format checked."""
    if metadata.get("format") != _FORMAT or "structure" not in metadata:
        raise CheckpointError(f"{path} is not a PertTX training checkpoint")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > _FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this pertx_scvi reads up to "
            f"{_FORMAT_VERSION} (a newer pertx_scvi wrote it: upgrade to resume from it)"
        )
    try:
        return from_json(json.loads(metadata["structure"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} holds an unreadable checkpoint ({exc!r})") from exc


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoint input/output with :func:`write_checkpoint` and
    :func:`read_checkpoint`: tensors and plain data only, so loading runs no code.

    With :attr:`hold` set, the next checkpoint saved is copied (its tensors cloned to the CPU)
    and kept until :meth:`write_held`, which may complete it first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self._held: tuple[dict[str, Any], dict[str, torch.Tensor], Path] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` as safetensors + JSON (:func:`write_checkpoint`)."""
        if storage_options is not None:
            raise TypeError("SafetensorsCheckpointIO takes no storage_options")
        if not self.hold:
            write_checkpoint(checkpoint, path)
            return
        tensors: dict[str, torch.Tensor] = {}
        self._held = _pack(checkpoint, tensors), tensors, Path(path)

    def write_held(self, complete: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Write the held checkpoint, if any, after ``complete(checkpoint)``."""
        if self._held is None:
            return
        packed, tensors, path = self._held
        self._held = None
        if complete is not None:
            complete(packed)
        _write_packed(packed, tensors, path)

    def drop_held(self) -> None:
        """Forget the held checkpoint without writing it."""
        self._held = None

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` (:func:`read_checkpoint`; nothing is unpickled)."""
        # map_location is left to Lightning, which moves the states to the model's device
        return read_checkpoint(path)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Delete the checkpoint at ``path`` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def read_checkpoint_structure(path: str | os.PathLike) -> dict[str, Any]:
    """The plain part of a checkpoint (tensors left as references), read without its tensors:
    a cheap look at a checkpoint's training setup before resuming from it."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    return _structure(path, metadata)


# ---- what Lightning does not keep -------------------------------------------------------------------
# numpy's legacy global generator (NPY002) is the state to keep: code that trains may draw from it.
def _rng_states() -> dict[str, Any]:
    states = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


class EpochCheckpoint(Callback):
    """Writes a resumable checkpoint at the end of every epoch and restores, on resume, what
    Lightning's own checkpoint leaves out.

    Lightning's checkpoint holds the weights, the optimiser, the learning-rate schedule and the
    loop progress; this callback's state adds the global random generators (torch, numpy,
    Python's ``random``; every rank's under DDP), the history logged so far, and ``setup``,
    the training setup the checkpoint belongs to (checked before resuming). The generators are
    restored at the start of the first resumed epoch, the history into ``history_logger``.

    The checkpoint of an epoch is taken at its ``on_train_epoch_end`` (the state Lightning
    resumes from), and written to ``path`` once the epoch's training metrics are logged
    (Lightning logs them after that hook): at the start of the next epoch or at the end of
    training. ``checkpoint_io`` must be the trainer's checkpoint plugin, which holds the
    checkpoint until then.

    Parameters
    ----------
    path
        The checkpoint file (replaced every epoch).
    setup
        Plain data describing the training setup.
    checkpoint_io
        The trainer's :class:`SafetensorsCheckpointIO`.
    history_logger
        scvi-tools' history logger (:class:`scvi.train._logger.SimpleLogger`), whose history
        becomes ``model.history``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        setup: dict[str, Any],
        checkpoint_io: SafetensorsCheckpointIO,
        history_logger: Any,
    ):
        super().__init__()
        self.path = Path(path)
        self.setup = setup
        self.checkpoint_io = checkpoint_io
        self.history_logger = history_logger
        self._rank_states: list[dict[str, Any]] = []
        self._restore: list[dict[str, Any]] | None = None
        self._held_epochs = 0

    STATE_KEY = "PertTXEpochCheckpoint"

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def _history(self) -> dict[str, pd.DataFrame]:
        # Only rank 0's logger has a history (elsewhere it answers with a placeholder).
        history = getattr(self.history_logger, "history", None)
        if rank_zero_only.rank != 0 or not isinstance(history, dict):
            return {}
        return {name: frame.copy() for name, frame in history.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "rng": self._rank_states, "history": self._history()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = list(state_dict["rng"])
        history = state_dict.get("history") or {}
        if rank_zero_only.rank == 0 and history:
            # scvi-tools' logger keeps its history in memory on rank 0 only
            self.history_logger.experiment.data = {k: v.copy() for k, v in history.items()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._write_held()
        if self._restore is None:
            return
        states, self._restore = self._restore, None
        rank = trainer.global_rank
        _set_rng_states(states[rank] if rank < len(states) else states[0])
        # Lightning created this epoch's data iterator before the restore (at setup, when
        # resuming): an uninterrupted run creates it here, after the epoch's set_epoch and
        # from these generator states (its base seed is drawn from torch's).
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        states = _rng_states()
        if _distributed():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            self._rank_states = gathered
        else:
            self._rank_states = [states]
        self._held_epochs = trainer.fit_loop.epoch_progress.current.processed
        self.checkpoint_io.hold = True
        try:
            # The full state (optimiser, schedule, callbacks), held by the plugin until written
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self.checkpoint_io.hold = False

    def on_train_end(self, trainer, pl_module) -> None:
        self._write_held()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Stopped between an epoch's end and the next epoch's start (e.g. by an earlier
        # callback): the held checkpoint is complete once Lightning has logged that epoch's
        # metrics (it then counts the epoch completed); else the previous one stays.
        if trainer.fit_loop.epoch_progress.current.completed >= self._held_epochs:
            self._write_held()
        else:
            self.checkpoint_io.drop_held()

    def _write_held(self) -> None:
        history = self._history()

        def add_history(checkpoint: dict[str, Any]) -> None:
            checkpoint["callbacks"][self.state_key]["history"] = history

        self.checkpoint_io.write_held(add_history)


def check_resumable(path: str | os.PathLike, setup: dict[str, Any]) -> None:
    """Check that the checkpoint at ``path`` can resume a training run with ``setup``.

    Raises
    ------
    CheckpointError
        When there is no checkpoint, it cannot be read, or it was written by another model or
        training setup (the message lists what differs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"resume=True, but {path.parent} holds no checkpoint ({path.name}): train without "
            "resume=True to start a run that writes one"
        )
    structure = read_checkpoint_structure(path)
    state = structure.get("callbacks", {}).get(EpochCheckpoint.STATE_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("setup"), dict):
        raise CheckpointError(f"{path} was not written by PertTX.train(checkpoint_dir=...)")
    differences = _setup_differences(state["setup"], setup)
    if differences:
        raise CheckpointError(
            f"the checkpoint {path} is from another model or training setup:\n  "
            + "\n  ".join(differences)
            + "\nresume with the model and train() arguments of the interrupted run, or train "
            "without resume=True (the checkpoint is then replaced)"
        )


def _setup_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    differences = []
    for key in sorted(saved.keys() | now.keys()):
        old, new = saved.get(key), now.get(key)
        if key == "parameters" and isinstance(old, dict) and isinstance(new, dict):
            missing = sorted(old.keys() - new.keys())
            extra = sorted(new.keys() - old.keys())
            reshaped = [
                f"{n} {list(old[n])} -> {list(new[n])}"
                for n in sorted(old.keys() & new.keys())
                if list(old[n]) != list(new[n])
            ]
            for what, names in (
                ("in the checkpoint only", missing),
                ("in the model only", extra),
                ("of other shapes", reshaped),
            ):
                if names:
                    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                    differences.append(f"parameters {what} ({len(names)}): {shown}")
        elif old != new:
            differences.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
    return differences
