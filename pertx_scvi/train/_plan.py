"""Training plan: scvi-tools' plan with a chosen optimiser, a warm-up + decay schedule per step,
and every loss term logged per epoch."""

from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import LambdaLR

from ._optimizers import OptimizerName, make_optimizer
from ._schedules import Schedule, lr_multiplier

DEFAULT_LR = 1e-2
"""Default peak learning rate of :class:`PertTXTrainingPlan` and :meth:`PertTX.train
<pertx_scvi.PertTX.train>` (the measured choice: ``benchmarks/learning_rate.py``)."""


class PertTXTrainingPlan(TrainingPlan):
    """Lightning plan for :class:`~pertx_scvi.module.PertTXModule`.

    The optimiser is built through scvi-tools' ``optimizer="Custom"`` /
    ``optimizer_creator`` seam (so ``TrainingPlan.configure_optimizers`` creates it);
    :meth:`configure_optimizers` adds the per-step warm-up and decay schedule, which
    scvi-tools' plan does not offer (it has ``ReduceLROnPlateau`` only).

    Parameters
    ----------
    module
        The PertTX module.
    optimizer
        ``"adamw"`` (default), ``"lion"`` (lion-pytorch) or ``"prodigy"`` (prodigyopt).
    lr
        Peak learning rate (:data:`DEFAULT_LR`, 1e-2: high for a transformer, because the
        per-gene effects are learned through products of weights that start at zero; warm-up
        and gradient clipping keep it stable).
    weight_decay
        Weight decay.
    lr_schedule
        ``"cosine"`` (default), ``"step"`` or ``"constant"`` after warm-up.
    warmup_fraction
        Share of all optimisation steps spent warming up linearly.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module,
        *,
        optimizer: OptimizerName = "adamw",
        lr: float = DEFAULT_LR,
        weight_decay: float = 1e-2,
        lr_schedule: Schedule = "cosine",
        warmup_fraction: float = 0.05,
        **kwargs,
    ):
        super().__init__(
            module,
            optimizer="Custom",
            optimizer_creator=self._create_optimizer,
            lr=lr,
            weight_decay=weight_decay,
            **kwargs,
        )
        self.optimizer_kind = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction

    def _create_optimizer(self, params):
        """scvi-tools' ``optimizer_creator``: the named optimiser on the trainable parameters,
        in the module's parameter groups where it has them (``optimizer_groups``)."""
        groups = getattr(self.module, "optimizer_groups", None)
        if groups is not None:
            params = groups(list(params), self.lr)
        return make_optimizer(self.optimizer_kind, params, self.lr, self.weight_decay)

    def configure_optimizers(self):
        config = super().configure_optimizers()  # the optimiser from _create_optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_fraction * total)
        multiplier = lr_multiplier(self.lr_schedule, total, warmup)
        config["lr_scheduler"] = {
            "scheduler": LambdaLR(config["optimizer"], multiplier),
            "interval": "step",
        }
        return config

    def _step(self, batch, mode: str):
        _, _, output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        size = output.n_obs_minibatch
        self.log(
            f"{mode}_loss" if mode == "train" else "validation_loss",
            output.loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=self.use_sync_dist,
        )
        # Every term (expression terms in reconstruction_loss, the others in extra_metrics),
        # logged here rather than through scvi-tools' metric collections (DDP-safe).
        for name, value in {**output.reconstruction_loss, **output.extra_metrics}.items():
            self.log(
                f"{name}_{mode}",
                value.mean().detach(),
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=self.use_sync_dist,
            )
        return output.loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "validation")
