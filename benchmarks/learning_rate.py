"""How the learning rate decides what PertTX learns in a short run (the default ``lr`` choice).

Usage::

    python benchmarks/learning_rate.py [--epochs 8] [--lr 1e-3 3e-3 1e-2] [--small]

Trains on the ``pertx demo`` task (the seeded simulated screen, four combinations of trained
genes held out) for each learning rate and prints the mean Pearson of Δ and top-20-DE MSE of
the held-out combinations for PertTX and, from the same run, the additive and train-mean
baselines (``model.evaluate``). ``--small`` uses d_model 32 and one layer.
"""

from __future__ import annotations

import argparse
import time

import torch

import pertx_scvi as px
from pertx_scvi.cli import _simulated_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--small", action="store_true", help="d_model 32, one layer")
    args = parser.parse_args()
    adata, setup, holdout, _ = _simulated_task(0)
    px.PertTX.setup_anndata(adata, **setup)
    size = {"d_model": 32, "n_layers": 1} if args.small else {}
    for lr in args.lr:
        torch.manual_seed(0)
        model = px.PertTX(adata, **size)
        started = time.perf_counter()
        model.train(
            max_epochs=args.epochs, lr=lr, holdout_perturbations=holdout, enable_progress_bar=False
        )
        seconds = time.perf_counter() - started
        result = model.evaluate(perturbations=holdout, baselines=("train_mean", "additive"))
        table = result[result["metric"].isin(["pearson_delta", "mse_top20"])]
        means = table.groupby(["metric", "method"])["value"].mean().unstack().round(3)
        print(f"lr {lr:g}, {args.epochs} epochs, trained in {seconds:.0f} s\n{means}\n", flush=True)


if __name__ == "__main__":
    main()
