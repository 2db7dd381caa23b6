"""Held-out regulators of the simulator: a PertTX variant against the baselines.

The screen, model size and training of ``tests/test_graph_encoder.py`` (4 single regulators
held out whose network neighbours were trained, the true network as the graph). Prints the mean
Pearson of Δ, top-20 Pearson of Δ and top-20 MSE over the held-out regulators, and the learned
retrieval weights. Examples::

    python benchmarks/unseen_simulator.py                                  # defaults, seed 0
    python benchmarks/unseen_simulator.py --model '{"effect_retrieval": false}' --seed 1
    python benchmarks/unseen_simulator.py --model '{"graph_self_dropout": 0.8}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import pertx_scvi as px

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_graph_encoder import EPOCHS, SMALL_MODEL, unseen_screen  # noqa: E402

BASELINES = ("train_mean", "train_mean_knockdown", "graph_neighbour", "graph_neighbour_knockdown")
METRICS = ["pearson_delta", "pearson_delta_top20", "mse_top20"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="{}", help="PertTX keyword arguments as JSON")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variant = json.loads(args.model)

    adata, graph, held, combos = unseen_screen(args.seed)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = px.PertTX(
        adata, gene_graph=graph, **SMALL_MODEL, graph_kwargs={"n_bases": 2}, **variant
    )
    model.train(
        max_epochs=EPOCHS,
        holdout_perturbations=held + combos,
        lr=3e-3,
        seed=0,
        enable_progress_bar=False,
    )
    retrieval = model.module.retrieval
    if retrieval is not None and retrieval.view_names:
        print("view weights", retrieval.source_weights.detach().numpy().round(3))
        print("shrinkage", retrieval.shrinkage.detach().numpy().round(3))
    result = model.evaluate(perturbations=held, baselines=BASELINES, gene_graph=graph)
    table = result[result["metric"].isin(METRICS)].pivot_table(
        index="method", columns="metric", values="value"
    )[METRICS]
    print(f"{variant} seed {args.seed}: {time.perf_counter() - started:.0f} s, held out {held}")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
