"""Training plan: an optimiser with warm-up and a decay schedule; every loss term logged per epoch."""

from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import LambdaLR

from ._optimizers import OptimizerName, make_optimizer
from ._schedules import Schedule, lr_multiplier


class PertTXTrainingPlan(TrainingPlan):
    """Lightning plan for :class:`~pertx_scvi.module.PertTXModule`.

    Parameters
    ----------
    module
        The PertTX module.
    optimizer
        ``"adamw"`` (default), ``"lion"`` (lion-pytorch) or ``"prodigy"`` (prodigyopt).
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    lr_schedule
        ``"cosine"`` (default), ``"step"`` or ``"constant"`` after warm-up.
    warmup_fraction
        Share of all optimisation steps spent warming up linearly.
    """

    def __init__(
        self,
        module,
        *,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        lr_schedule: Schedule = "cosine",
        warmup_fraction: float = 0.05,
        **kwargs,
    ):
        super().__init__(module, optimizer="AdamW", lr=lr, weight_decay=weight_decay, **kwargs)
        self.optimizer_name = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction

    def configure_optimizers(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = make_optimizer(self.optimizer_name, params, self.lr, self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_fraction * total)
        scheduler = LambdaLR(optimizer, lr_multiplier(self.lr_schedule, total, warmup))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

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
        # Per-term losses, logged here rather than through LossOutput.extra_metrics (DDP-safe).
        for name, value in output.reconstruction_loss.items():
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
