"""Experiment loggers and precision: nothing imports wandb unless it is asked for."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from scvi.train._logger import SimpleLogger

from .._threads import keep_torch_threads


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str | int:
    """``bf16-mixed`` on a capable GPU by default, full fp32 on CPU (where bf16 is slower)."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision is None:
        if on_gpu and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    mixed = str(precision) in ("16", "16-mixed", "bf16", "bf16-mixed", "bf16-true", "16-true")
    if mixed and not on_gpu:
        raise ValueError(
            f"precision={precision!r} is GPU-only: on CPU bf16 runs at half the fp32 speed; "
            "leave precision=None"
        )
    return precision


class EmbeddingUmapCallback(Callback):
    """At each validation, logs a UMAP image of validation-cell embeddings to the logger.

    Coloured by perturbation (and cell type when registered). Runs only with loggers that
    have ``log_image`` (e.g. Lightning's WandbLogger).
    """

    def __init__(self, model, cells: np.ndarray, max_cells: int = 1000, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.model = model
        self.cells = np.sort(rng.permutation(cells)[:max_cells])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not len(self.cells):
            return
        import matplotlib.pyplot as plt

        from ..pl import umap

        was_training = pl_module.module.training
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            latent = self.model.get_latent_representation(indices=self.cells)
        pl_module.module.train(was_training)
        view = self.model.adata[self.cells].copy()
        view.obsm["X_pertx"] = latent
        setup = self.model._setup_args
        colors = [k for k in (setup["perturbation_key"], setup["cell_type_key"]) if k]
        n_neighbors = min(15, len(self.cells) - 1)
        with keep_torch_threads():  # scanpy's numba kernels reset torch's thread count
            figure = umap(view, color=colors, n_neighbors=n_neighbors, recompute=True)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="umap_X_pertx", images=[figure], step=trainer.global_step)
        plt.close(figure)


def make_loggers(logger, model, validation_cells: np.ndarray):
    """Loggers for the trainer (scvi's history logger first, so ``model.history`` is filled)
    and the callbacks they need."""
    loggers = [SimpleLogger()]
    if logger is None or logger is False:
        return loggers, []
    if isinstance(logger, str):
        name = logger.lower()
        if name == "wandb":
            try:
                import wandb  # noqa: F401
                from lightning.pytorch.loggers import WandbLogger
            except ImportError as error:
                raise ImportError("logger='wandb' needs `pip install wandb`") from error
            logger = WandbLogger(project="pertx")
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger("pertx_logs")
        elif name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            logger = CSVLogger("pertx_logs")
        else:
            raise ValueError(
                f"logger must be 'wandb', 'tensorboard', 'csv' or a Logger: {logger!r}"
            )
    loggers.append(logger)
    callbacks = []
    if hasattr(logger, "log_image") and len(validation_cells):
        callbacks.append(EmbeddingUmapCallback(model, validation_cells))
    return loggers, callbacks
