"""Training and prediction throughput of PertTX (cells per second), with baselines beside it.

Usage::

    python benchmarks/speed.py --out speed_results [--cells 4096] [--threads 2] [--no-heads]

Each configuration is trained for one epoch on ``--cells`` cells through the public API
(``model.train``) and predicts 1,000 control cells x 2 perturbations
(``predict_perturbation``). Training speed is reported two ways: steady state (64 pairs over the
median step time, measured by a Lightning callback, so start-up is left out) and end to end
(training cells over the wall time of ``model.train``).

Papalexi 2021 rows: the default size, the default with ``max_genes=128``, and the size at which
the upstream pertTF trains at 37 cells/s and predicts at 254 cells/s on this machine (d_model
64, 2 layers, 4 heads, 64 hidden units, all 299 genes as tokens, batch 64), with two baselines
measured beside it: the target cell masked (two encoder passes per pair, this package's
earlier design) and the unfused ``native`` attention. Head rows (simulated screen of 299 genes
with 3 cell types and a phenotype score): the cost of each extra head against no head.
Writes ``speed.csv`` and ``speed.md``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

import pertx_scvi as px

PERTTF_SIZE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hidden": 64}
PAPALEXI = {
    "default": {},
    "default, max_genes=128": {"max_genes": 128},
    "pertTF size": PERTTF_SIZE,
    "pertTF size, target masked (2 passes)": {**PERTTF_SIZE, "mlm_cell": "target"},
    "pertTF size, native attention": {**PERTTF_SIZE, "attention_backend": "native"},
}
NO_HEADS = {"cell_type_weight": 0.0, "next_cell_type_weight": 0.0}
NO_HEADS |= {"phenotype_weight": 0.0, "next_phenotype_weight": 0.0}
HEADS = {
    "heads: none": NO_HEADS,
    "heads: cell type": {**NO_HEADS, "cell_type_weight": 1.0},
    "heads: cell type + next-cell type": {
        **NO_HEADS,
        "cell_type_weight": 1.0,
        "next_cell_type_weight": 1.0,
    },
    "heads: phenotype + next phenotype": {
        **NO_HEADS,
        "phenotype_weight": 1.0,
        "next_phenotype_weight": 1.0,
    },
    "heads: all (+ perturbation, contrastive, triplet)": {
        "perturbation_weight": 1.0,
        "contrastive_weight": 0.1,
        "triplet_weight": 0.1,
    },
}


class StepTimer(pl.Callback):
    """Wall time of every training batch (forward, backward and optimiser step)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        self.seconds.append(time.perf_counter() - self._start)


def measure(adata, name: str, kwargs: dict, setup: dict, n_cells: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    subset = adata[np.sort(rng.choice(adata.n_obs, min(n_cells, adata.n_obs), replace=False))]
    subset = subset.copy()
    px.PertTX.setup_anndata(
        subset, perturbation_key="perturbation", control_group="control", **setup
    )
    torch.manual_seed(seed)
    model = px.PertTX(subset, **kwargs)
    timer = StepTimer()
    started = time.perf_counter()
    model.train(
        max_epochs=1,
        validation_size=0.0,
        batch_size=64,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    train_seconds = time.perf_counter() - started
    controls = subset[subset.obs["perturbation"] == "control"][:1000]
    perturbations = [p for p in subset.obs["perturbation"].unique() if p != "control"][:2]
    started = time.perf_counter()
    prediction = model.predict_perturbation(controls, perturbations)
    predict_seconds = time.perf_counter() - started
    step = float(np.median(timer.seconds[2:] or timer.seconds))
    return {
        "config": name,
        "attention": model.module.encoder.backend,
        "train_cells_per_s": 64 / step,
        "train_cells_per_s_end_to_end": len(model.train_indices) / train_seconds,
        "predict_cells_per_s": prediction.n_obs / predict_seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="speed_results")
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--no-heads", action="store_true", help="skip the head rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [(px.datasets.papalexi2021(args.data_path), {}, PAPALEXI)]
    if not args.no_heads:
        simulated, _, _ = px.datasets.simulate(
            n_genes=299, n_cell_types=3, n_control_cells=1500, n_cells_per_perturbation=150
        )
        setup = {"cell_type_key": "cell_type", "phenotype_keys": ["phenotype"]}
        runs.append((simulated, setup, HEADS))
    rows = []
    for adata, setup, configs in runs:
        for name, kwargs in configs.items():
            rows.append(measure(adata, name, kwargs, setup, args.cells))
            print({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items()})
    table = pd.DataFrame(rows)
    table["train_x_pertTF"] = table["train_cells_per_s"] / 37.0
    table["predict_x_pertTF"] = table["predict_cells_per_s"] / 254.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "speed.csv", index=False)
    (out / "speed.md").write_text(table.round(2).to_string(index=False) + "\n")
    print(table.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
