"""What the graph prior costs: loading GO + OmniPath, and the graph encoder's share of a step.

Usage::

    python benchmarks/graph_cost.py --out graph_cost [--steps 30] [--threads 1]

Loads the GO graph (``go_top20_jaccard.csv.gz``, 409k edges) and OmniPath (279k interactions,
UniProt ids mapped through ``human_gene_ids.tsv.gz``) and reports wall time and peak memory. Then
times a training step (forward, loss, backward, AdamW step; batch 64) on Papalexi 2021 at the
default model size with the label encoder and with the graph encoder over both graphs, on the
same batches, alternating step by step so that both see the same machine load; the median paired
ratio is the encoder's overhead (the aim is under 20 %). Writes ``step_time.csv`` and
``graph_cost.md`` under ``--out``.

The cross-validation over Papalexi's 25 targets with real and shuffled graphs is
``pertx benchmark --data papalexi2021 --folds 5 --graph go,omnipath --shuffled-graph``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import pandas as pd
import torch

import pertx_scvi as px


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def data_dir(path: str | None) -> Path:
    if path:
        return Path(path)
    if os.environ.get("PERTX_DATA_DIR"):
        return Path(os.environ["PERTX_DATA_DIR"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_graphs(root: Path):
    started = time.perf_counter()
    ids = root / "graphs" / "human_gene_ids.tsv.gz"
    go = px.GeneGraph.from_gears_go(root / "graphs" / "go_top20_jaccard.csv.gz")
    omnipath = px.GeneGraph.from_omnipath(
        root / "graphs" / "omnipath_interactions.csv.gz", id_table=ids
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    log(f"graphs loaded in {seconds:.1f} s (peak RSS {peak:.2f} GB): {go!r}; {omnipath!r}")
    return go, omnipath, ids


def _training_batches(model, batch_size: int, seed: int = 0):
    """Paired training batches of all of ``model``'s registered cells, as ``model.train`` builds
    them (``PertTX._make_datamodule``, no validation share), and that data module."""
    datamodule = model._make_datamodule(validation_size=0.0, batch_size=batch_size, seed=seed)
    return datamodule.train_dataloader(), datamodule


def step_time(adata, graphs, ids, n_steps: int, model_kwargs: dict) -> pd.DataFrame:
    """Time of a training step (forward, loss, backward, AdamW step) with the label and the
    graph encoder, on the same batches, alternating step by step (so that both see the same
    machine load); returns one row per step pair."""
    models = {}
    for encoder in ("label", "graph"):
        started = time.perf_counter()
        kwargs = {} if encoder == "label" else {"gene_graph": list(graphs), "id_table": ids}
        torch.manual_seed(0)
        models[encoder] = px.PertTX(adata, **model_kwargs, **kwargs)
        log(f"step time: {encoder} model built in {time.perf_counter() - started:.1f} s")
    loader, _ = _training_batches(models["label"], batch_size=64)
    optimizers = {}
    for encoder, model in models.items():
        module = model.module.train()
        genes = model._make_datamodule(validation_size=0.0).trained_gene_positions()
        module.perturbation_encoder.trained_genes[torch.from_numpy(genes)] = True
        params = [p for p in module.parameters() if p.requires_grad]
        optimizers[encoder] = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    rows = []
    for i, batch in enumerate(loader):
        if i >= n_steps + 3:
            break
        row = {"step": i}
        order = ("label", "graph") if i % 2 == 0 else ("graph", "label")
        for encoder in order:
            module, optimizer = models[encoder].module, optimizers[encoder]
            started = time.perf_counter()
            _, _, losses = module(batch)
            losses.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            row[f"{encoder}_s"] = time.perf_counter() - started
        if i >= 3:  # warm-up steps (first subgraph, allocator) are not counted
            rows.append(row)
            if len(rows) % 10 == 0:
                log(f"step time: {len(rows)} step pairs")
    table = pd.DataFrame(rows)
    table["ratio"] = table["graph_s"] / table["label_s"]
    return table


def step_summary(steps: pd.DataFrame) -> str:
    label, graph = steps["label_s"].median(), steps["graph_s"].median()
    return (
        f"label encoder {label * 1e3:.0f} ms, graph encoder {graph * 1e3:.0f} ms per step "
        f"(medians over {len(steps)} alternating step pairs); median paired ratio "
        f"{steps['ratio'].median():.3f}: overhead {steps['ratio'].median() - 1:+.1%} (aim < 20 %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="graph_cost")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_dir(args.data_dir)
    started = time.perf_counter()
    go, omnipath, ids = load_graphs(root)
    load_s = time.perf_counter() - started
    load_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    adata = px.datasets.papalexi2021(root / "perturb" / "papalexi2021_thp1_subset.h5ad")
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    steps = step_time(adata, (go, omnipath), ids, args.steps, {})
    steps.to_csv(out / "step_time.csv", index=False)
    report = [
        "# Graph prior cost",
        "",
        f"- loading GO + OmniPath: {load_s:.1f} s, peak RSS {load_gb:.2f} GB (process total)",
        f"- step time: {step_summary(steps)}",
        f"- torch threads: {torch.get_num_threads()}",
    ]
    (out / "graph_cost.md").write_text("\n".join(report) + "\n")
    log("\n".join(report))


if __name__ == "__main__":
    main()
