"""Training role of :class:`~pertx_scvi.PertTX`: the data module (split, pairing, batches),
the scvi-tools training plan and runner, and a defined state after an interruption."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scvi.train import TrainRunner

from .data import ControlSampler, PerturbationDataSplitter, split_cells
from .module import link_space_effect, warm_start_effects
from .train import (
    CHECKPOINT_FILE,
    DEFAULT_LR,
    EpochCheckpoint,
    PertTXTrainingPlan,
    SafetensorsCheckpointIO,
    make_loggers,
    resolve_precision,
)
from .train._checkpoint import check_resumable

# Lightning strategies that train in child processes (spawned or forked): the weights come back
# through a pickled file and the rest of the model's state (history, split) not at all.
_CHILD_PROCESS_STRATEGIES = ("spawn", "fork", "notebook")


def _check_strategy(strategy) -> None:
    """Refuse strategies whose training runs in child processes (see ``train``'s Notes)."""
    if isinstance(strategy, str):
        name = strategy
    else:
        start = getattr(strategy, "_start_method", "popen")  # Lightning's DDPStrategy
        name = None if start == "popen" else f"DDPStrategy(start_method={start!r})"
    if name and any(kind in name for kind in _CHILD_PROCESS_STRATEGIES):
        raise ValueError(
            f"strategy={name!r} trains in child processes, whose weights and history do not "
            'come back to this one: use strategy="ddp", which runs this script once per device '
            '(run it as a script: python my_script.py); see "Several processes" in the docs'
        )


def _find_unused_parameters(strategy) -> None:
    """Let DDP train steps in which some parameters get no gradient (effect retrieval's view
    weights and shrinkage when no gene of the batch is retrieved): plain DDP stops at the first
    such step. An explicit ``find_unused_parameters`` is kept."""
    ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)  # Lightning's DDPStrategy
    if isinstance(ddp_kwargs, dict):
        ddp_kwargs.setdefault("find_unused_parameters", True)


def _share_history(model) -> None:
    """Give every rank rank 0's history (Lightning's loggers log on rank 0 only)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        history = [model.history_ if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(history, src=0)  # in memory, between our own processes
        model.history_ = history[0]


def _interruption(error: BaseException, trainer) -> str | None:
    """What interrupted training (``"Ctrl-C"``, ``"SIGTERM"``), or None for another exit.

    Lightning turns a KeyboardInterrupt into ``sys.exit(1)`` (the interrupt is its context) and
    a SIGTERM, without a handler of ours, into its ``SIGTERMException`` (a ``SystemExit``).
    """
    sigterm = bool(getattr(trainer, "received_sigterm", False))
    if isinstance(error, KeyboardInterrupt) or isinstance(error.__context__, KeyboardInterrupt):
        return "SIGTERM" if sigterm else "Ctrl-C"
    if sigterm or type(error).__name__ == "SIGTERMException":
        return "SIGTERM"
    return None


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (KeyboardInterrupt) or SIGTERM before its last epoch.

    Raised by :meth:`PertTX.train`; the message says how many epochs finished. The model keeps
    the weights and history reached so far, with ``is_trained_`` False.
    """

    def __init__(self, message: str, epochs_finished: int = 0, max_epochs: int = 0):
        super().__init__(message)
        self.epochs_finished, self.max_epochs = epochs_finished, max_epochs


class TrainingMixin:
    """``train`` of :class:`~pertx_scvi.PertTX` through scvi-tools' seams: the data splitter
    (:attr:`_data_splitter_cls`), the training plan (:attr:`_training_plan_cls`) and the train
    runner (:attr:`_train_runner_cls`)."""

    _data_splitter_cls = PerturbationDataSplitter
    _training_plan_cls = PertTXTrainingPlan
    _train_runner_cls = TrainRunner

    def train(
        self,
        max_epochs: int = 20,
        holdout_perturbations: Sequence[str] | None = None,
        validation_size: float = 0.1,
        batch_size: int = 64,
        optimizer: str = "adamw",
        lr: float = DEFAULT_LR,
        weight_decay: float = 1e-2,
        lr_schedule: str = "cosine",
        warmup_fraction: float = 0.05,
        early_stopping: bool = False,
        early_stopping_patience: int = 5,
        gradient_clip_val: float = 1.0,
        control_cells: np.ndarray | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | int | None = None,
        logger=None,
        seed: int = 0,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        **trainer_kwargs,
    ):
        """Train on the registered AnnData.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        holdout_perturbations
            Labels whose cells never reach training or validation (to predict them later).
        validation_size
            Share of the remaining cells used for validation (loss logged every epoch).
        batch_size
            Pairs per mini-batch.
        optimizer
            ``"adamw"``, ``"lion"`` (lion-pytorch) or ``"prodigy"`` (prodigyopt; use ``lr=1``).
        lr, weight_decay, lr_schedule, warmup_fraction
            Optimiser settings and the schedule after linear warm-up (``"cosine"``, ``"step"``,
            ``"constant"``); see :class:`~pertx_scvi.train.PertTXTrainingPlan` (the default
            ``lr``, 1e-2, is :data:`pertx_scvi.train.DEFAULT_LR`).
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for that many epochs.
        gradient_clip_val
            Gradient-norm clipping.
        control_cells
            Boolean mask or positions of the control cells that training may use (as sources
            and targets); the others are left out, e.g. to measure effects against them later.
        accelerator, devices
            Passed to Lightning.
        precision
            Lightning precision; default ``"bf16-mixed"`` on a GPU that supports it, ``32`` on CPU
            (mixed precision is GPU-only: on CPU it is slower, not faster).
        logger
            ``None`` (epoch metrics in ``model.history``), ``"wandb"`` (also Weights & Biases,
            with a UMAP of validation-cell embeddings at each validation), ``"tensorboard"``,
            ``"csv"``, or any Lightning logger. ``model.history`` is kept in every case.
        seed
            Seed of the validation split and of the pairing.
        plan_kwargs
            Extra keyword arguments of :class:`~pertx_scvi.train.PertTXTrainingPlan`.
        datasplitter_kwargs
            Extra keyword arguments of :class:`~pertx_scvi.data.PerturbationDataSplitter`:
            the out-of-core reading of a backed AnnData (``block_size``, ``window_blocks``,
            ``max_cached_controls``), e.g. ``{"block_size": 4096}``.
        checkpoint_dir
            Folder of a resumable checkpoint, ``last.safetensors``, replaced at the end of
            every epoch: weights, optimiser, learning-rate schedule, Lightning's loop progress,
            the global random generators (torch, numpy, ``random``) and the history so far,
            as tensors and plain data (nothing pickled). A checkpoint already there is
            replaced at the end of the first epoch unless ``resume=True``.
        resume
            Continue the run whose checkpoint is in ``checkpoint_dir``: call ``train`` with
            the arguments of the interrupted run, on the interrupted model or on a model built
            as it was (same data, parameters and initial weights, e.g. from the same seed). The run ends with the
            weights and the full ``history`` (every epoch) of an uninterrupted run. A missing
            checkpoint, or one from another model or setup (other parameter names or shapes,
            ``max_epochs``, batch size, seed, optimiser settings, cell split...), is a
            ``ValueError`` naming what differs.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (and Lightning's Trainer), e.g.
            ``strategy="ddp"`` (see Notes).

        Notes
        -----
        The data come from :meth:`_make_datamodule` (the split, the control pairing and the
        paired batches, as a :class:`~pertx_scvi.data.PerturbationDataSplitter`); scripts that
        need training batches without training call it too.

        Every input is checked before the model changes: too few cells or control cells, no
        perturbed cells to learn from, or ``max_epochs < 1`` are a ``ValueError``.

        A held-out label holds out its gene set, under every spelling (``"A+B"`` holds out
        ``"B+A"`` cells too).

        Ctrl-C (``KeyboardInterrupt``), or SIGTERM under the ``pertx`` command, stops training
        at once and raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) saying how
        many epochs finished. The model keeps the weights, ``history`` and cell split reached
        so far, with ``is_trained_ = False`` (so :meth:`evaluate` refuses and predictions warn);
        set ``model.is_trained_ = True`` to use it as it is, or call ``train`` again. With
        ``checkpoint_dir``, ``train(..., checkpoint_dir=..., resume=True)`` continues from the
        last finished epoch instead.

        Several processes: ``accelerator="cpu"`` or ``"gpu"``, ``devices=N`` and
        ``strategy="ddp"`` train on N processes (Lightning runs the script again for ranks
        1 ... N-1, so run it as a script file; on CPU they communicate through gloo). Every
        rank generates the same batch order and trains on its own share of the batches
        (Lightning's distributed sampler is not used: ``use_distributed_sampler=False``);
        DDP keeps the weights alike on every rank, and after training every rank has rank 0's
        ``history``. Save the model from rank 0 only (``model.trainer.is_global_zero``).
        DDP runs with ``find_unused_parameters=True`` unless the strategy sets it (some
        parameters get no gradient in some steps). scvi-tools turns early stopping off under
        ``strategy="ddp"``. ``"ddp_spawn"``,
        ``"ddp_fork"`` and ``"ddp_notebook"`` are refused (``ValueError``): they train in
        child processes whose history and split do not come back to the calling process.
        """
        if max_epochs is None or int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the run's checkpoint")
        if resume and trainer_kwargs.get("ckpt_path") is not None:
            raise ValueError("pass resume=True or a Lightning ckpt_path, not both")
        _check_strategy(trainer_kwargs.get("strategy"))
        # Our loaders shard their batches by rank themselves; Lightning's distributed sampler
        # would wrap the batch sampler as if it yielded single cells.
        trainer_kwargs.setdefault("use_distributed_sampler", False)
        datamodule = self._make_datamodule(
            holdout_perturbations,
            validation_size,
            batch_size,
            control_cells,
            seed,
            datasplitter_kwargs=datasplitter_kwargs,
        )
        plan = self._training_plan_cls(
            self.module,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            warmup_fraction=warmup_fraction,
            **(plan_kwargs or {}),
        )
        if datamodule.n_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if early_stopping:
            if not datamodule.n_val:
                raise ValueError("early_stopping needs a validation set: set validation_size > 0")
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        trainer_kwargs["precision"] = resolve_precision(precision, accelerator)
        loggers, callbacks = make_loggers(logger, self, datamodule.val_idx)
        if checkpoint_dir is not None:
            path = Path(os.fspath(checkpoint_dir)).expanduser() / CHECKPOINT_FILE
            setup = self._training_setup(
                datamodule,
                max_epochs=int(max_epochs),
                optimizer=optimizer,
                lr=lr,
                weight_decay=weight_decay,
                lr_schedule=lr_schedule,
                warmup_fraction=warmup_fraction,
                gradient_clip_val=gradient_clip_val,
            )
            if resume:
                check_resumable(path, setup)
                trainer_kwargs["ckpt_path"] = os.fspath(path)
            elif path.exists():
                warnings.warn(
                    f"{path} holds the checkpoint of an earlier run: it is replaced at the end "
                    "of the first epoch (pass resume=True to continue that run instead)",
                    UserWarning,
                    stacklevel=2,
                )
            checkpoint_io = SafetensorsCheckpointIO()
            plugins = trainer_kwargs.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
            trainer_kwargs["plugins"] = [*plugins, checkpoint_io]
            callbacks.append(EpochCheckpoint(path, setup, checkpoint_io, loggers[0]))
        trainer_kwargs["logger"] = loggers
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), *callbacks]
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=datamodule,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        _check_strategy(runner.trainer.strategy)  # e.g. what "auto" chose
        _find_unused_parameters(runner.trainer.strategy)
        # Checks done: from here on the model changes.
        trained_genes = torch.from_numpy(datamodule.trained_gene_positions())
        self.module.perturbation_encoder.trained_genes[trained_genes] = True
        if self._effect_warm_start and not resume:  # the checkpoint has the weights
            self._warm_start_effects(datamodule, seed)
        known = {self._parse(p) for p in self.holdout_perturbations_}
        new = [p for p in datamodule.holdout_perturbations if self._parse(p) not in known]
        self.holdout_perturbations_ = sorted([*self.holdout_perturbations_, *new])
        if resume:  # the run's history so far comes from the checkpoint
            self.history_, self.is_trained_ = None, False

        # Lightning trains the module in the mode it finds it in, and a model trained or
        # interrupted before is in eval mode (no dropout, inference tokenisation).
        self.module.train()
        main_thread = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            runner()
        except (KeyboardInterrupt, SystemExit) as error:
            cause = _interruption(error, runner.trainer)
            if cause is None:
                raise
            if sigint is not None:  # Lightning ignores Ctrl-C once it has caught one
                signal.signal(signal.SIGINT, sigint)
            finished = int(runner.trainer.current_epoch)
            self.train_indices = datamodule.train_idx
            self.validation_indices = datamodule.val_idx
            self.test_indices = datamodule.test_idx
            self.is_trained_ = False
            self.module.eval()
            resumable = ""
            if checkpoint_dir is not None:
                resumable = (
                    f"; {checkpoint_dir} holds the checkpoint of the last finished epoch: "
                    "train(..., checkpoint_dir=..., resume=True) on a model built as this one "
                    "continues from it"
                )
            raise TrainingInterrupted(
                f"training interrupted ({cause}) after {finished} of {max_epochs} epochs: the "
                "model keeps the weights, history and cell split reached so far, with "
                "is_trained_ = False (set model.is_trained_ = True to use it as it is, or "
                f"call train() again){resumable}",
                finished,
                int(max_epochs),
            ) from error
        _share_history(self)

    def _training_setup(self, datamodule: PerturbationDataSplitter, **options) -> dict:
        """What a checkpoint must match to resume a run: the model's parameter names and
        shapes, the cell split, the batches and the options of ``train`` (plain data)."""
        split = np.concatenate([datamodule.train_idx, [-1], datamodule.val_idx])
        return {
            "model": type(self).__name__,
            "parameters": {k: list(v.shape) for k, v in self.module.state_dict().items()},
            "n_train": int(len(datamodule.train_idx)),
            "n_val": int(len(datamodule.val_idx)),
            "split_sha256": hashlib.sha256(split.astype(np.int64).tobytes()).hexdigest(),
            "holdout_perturbations": list(datamodule.holdout_perturbations),
            "batch_size": int(datamodule.batch_size),
            "seed": int(datamodule.seed),
            **{k: v.item() if isinstance(v, np.generic) else v for k, v in options.items()},
        }

    def _make_datamodule(
        self,
        holdout_perturbations: Sequence[str] | None = None,
        validation_size: float = 0.1,
        batch_size: int = 64,
        control_cells: np.ndarray | None = None,
        seed: int = 0,
        datasplitter_kwargs: dict | None = None,
    ) -> PerturbationDataSplitter:
        """The data of :meth:`train`: split, control pairing and paired batches, checked.

        A :class:`~pertx_scvi.data.PerturbationDataSplitter` (scvi-tools' ``DataSplitter``
        seam) of the registered AnnData: held-out labels (every spelling of their gene set)
        in ``test_idx``, a random ``validation_size`` share of the others in ``val_idx``, each
        target cell paired with control cells of its context. The model is not changed. Its
        ``train_dataloader()`` yields the batches ``train`` trains on (arguments as in
        :meth:`train`), e.g. to time training steps outside Lightning.
        """
        labels = self._label_categories()
        holdout = list(dict.fromkeys(str(p) for p in (holdout_perturbations or [])))
        holdout_code = dict(zip(holdout, self._label_codes(holdout), strict=True))
        unknown = [p for p in holdout if holdout_code[p] < 0]
        if unknown:
            raise ValueError(
                f"holdout_perturbations {unknown} not found in the perturbation column "
                f"(labels include {labels[:10]})"
            )
        control_codes = self._control_codes()
        held_controls = [p for p in holdout if holdout_code[p] in control_codes]
        if held_controls:
            raise ValueError(f"the control label {held_controls} cannot be held out")

        cells = self._registered_cells()
        is_control = np.isin(cells.label_codes, control_codes)
        excluded = np.zeros(self.adata.n_obs, dtype=bool)
        if control_cells is not None:
            allowed = np.zeros(self.adata.n_obs, dtype=bool)
            allowed[np.asarray(control_cells)] = True
            excluded = is_control & ~allowed
        label_codes = np.where(excluded, -1, cells.label_codes)
        holdout_codes = np.array([holdout_code[p] for p in holdout] + [-1])
        train_idx, val_idx, test_idx = split_cells(
            label_codes, holdout_codes, validation_size, seed
        )
        sources = np.flatnonzero(is_control & ~excluded)
        self._check_training_cells(
            is_control, sources, train_idx, val_idx, holdout, control_cells, validation_size
        )
        sampler = ControlSampler(sources, cells.context, self._context_names())
        return self._data_splitter_cls(
            self.adata_manager,
            cells,
            train_idx,
            val_idx,
            test_idx,
            sampler,
            batch_size=batch_size,
            seed=seed,
            holdout_perturbations=holdout,
            **(datasplitter_kwargs or {}),
        )

    @torch.no_grad()
    def _warm_start_effects(
        self, datamodule: PerturbationDataSplitter, seed: int, max_cells: int = 256
    ) -> int:
        """Start the additive path at the trained single genes' observed mean effects.

        Up to ``max_cells`` training cells of every single-gene label are compared with control
        cells drawn from their own contexts (the training pairing), in the decoder's output
        space (:func:`~pertx_scvi.module.link_space_effect`), and split into the mean effect,
        the knockdown of the measured target and each gene's remainder
        (:func:`~pertx_scvi.module.warm_start_effects`). Training then refines from the
        baselines instead of from zero. A model trained before is left as it is. Returns the
        number of genes started.
        """
        retrieval = self.module.retrieval
        if retrieval is None:
            return 0
        cells, train = datamodule.cells, datamodule.train_idx
        codes = cells.label_codes[train]
        sets = cells.label_gene_sets
        single = (sets >= 0).sum(1) == 1
        order = np.argsort(codes, kind="stable")
        labels, starts, counts = np.unique(codes[order], return_index=True, return_counts=True)
        rng = np.random.default_rng(seed + 2)
        genes, effects = [], []
        for code, start, count in zip(labels, starts, counts, strict=True):
            if code < 0 or not single[code]:
                continue
            members = train[order[start : start + count]]
            picked = rng.choice(members, min(count, max_cells), replace=False)
            sources = datamodule.sampler.draw(picked, rng)
            perturbed = self.module.input_values(cells.dense(picked).to(self.device))[0]
            control = self.module.input_values(cells.dense(sources).to(self.device))[0]
            effects.append(link_space_effect(perturbed, control, self.module.likelihood))
            genes.append(int(sets[code][sets[code] >= 0][0]))
        if not genes:
            return 0
        fresh = warm_start_effects(
            self.module.decoder, retrieval, torch.tensor(genes), torch.stack(effects)
        )
        return int(fresh.sum())

    def _check_training_cells(
        self,
        is_control: np.ndarray,
        sources: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        holdout: list[str],
        control_cells,
        validation_size: float,
    ) -> None:
        """Clear errors for data that cannot train a model (before anything changes)."""
        setup = self._setup_args
        where = f"adata.obs[{setup['perturbation_key']!r}]"
        control = setup["control_group"]
        n_cells = self.adata.n_obs
        if n_cells < 2:
            raise ValueError(
                f"adata has {n_cells} cell: training needs control cells and perturbed cells"
            )
        if len(sources) < 2:
            allowed = "" if control_cells is None else " allowed by control_cells="
            raise ValueError(
                f"training needs at least 2 control cells to pair perturbed cells with; "
                f"{where} has {int(is_control.sum())} control cells ({control!r}), "
                f"{len(sources)}{allowed} usable"
            )
        used = np.concatenate([train_idx, val_idx])
        if not (~is_control[used]).any():
            if (~is_control).any():
                reason = f"all are held out (holdout_perturbations={holdout})"
            else:
                reason = f"every cell is a control ({control!r})"
            raise ValueError(
                f"no perturbed cells to train on in {where}: {reason}; PertTX learns "
                "perturbation effects from perturbed cells"
            )
        if not len(train_idx):
            raise ValueError(
                f"no cells left to train on: validation_size={validation_size} takes all "
                f"{len(used)} cells; lower validation_size"
            )
