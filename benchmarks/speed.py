"""Training and prediction throughput of PertTX on Papalexi 2021 (cells per second).

Usage::

    python benchmarks/speed.py --out speed_results [--cells 4096] [--threads 2]

Measures, in one run, each configuration below through the public API (``model.train`` for
one epoch on ``--cells`` training cells, ``predict_perturbation`` on 1,000 control cells x 2
perturbations) and writes ``speed.csv`` and ``speed.md``. The reference configuration is the
size at which the upstream pertTF trains at 37 cells/s and predicts at 254 cells/s on this
machine (d_model 64, 2 layers, 4 heads, 64 hidden units, all 299 genes as tokens, batch 64);
the ``native`` attention row is the unfused baseline measured beside it.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pertx_scvi as px

CONFIGS = {
    "default": {},
    "pertTF-size sdpa": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hidden": 64},
    "pertTF-size native": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "d_hidden": 64,
        "attention_backend": "native",
    },
}


def measure(adata, name: str, kwargs: dict, n_cells: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    subset = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
    px.PertTX.setup_anndata(subset, perturbation_key="perturbation", control_group="control")
    model = px.PertTX(subset, **kwargs)
    started = time.perf_counter()
    model.train(max_epochs=1, validation_size=0.0, batch_size=64, enable_progress_bar=False)
    train_seconds = time.perf_counter() - started
    controls = subset[subset.obs["perturbation"] == "control"][:1000]
    started = time.perf_counter()
    prediction = model.predict_perturbation(controls, ["IRF1", "IRF1+JAK2"])
    predict_seconds = time.perf_counter() - started
    return {
        "config": name,
        "attention": model.module.encoder.backend,
        "train_cells_per_s": len(model.train_indices) / train_seconds,
        "predict_cells_per_s": prediction.n_obs / predict_seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="speed_results")
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adata = px.datasets.papalexi2021(args.data_path)
    rows = []
    for name, kwargs in CONFIGS.items():
        rows.append(measure(adata, name, kwargs, args.cells))
        print(rows[-1], flush=True)
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
