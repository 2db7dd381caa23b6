"""Unseen-gene prediction on Papalexi 2021: 5-fold CV over knockout targets with gene graphs.

Usage::

    python benchmarks/papalexi_cv.py --out papalexi_cv_results [--epochs 2] [--threads 1]
    python benchmarks/papalexi_cv.py --out step_time --step-time-only

The 25 knockout targets are sorted, permuted with ``numpy.random.default_rng(0)`` and cut into
5 consecutive groups of 5; each fold holds its 5 targets out entirely (no cell of them reaches
training). Controls are split in two halves (:func:`pertx_scvi.metrics.split_control`): the
model and the baselines see the first half, observed effects are measured against the second.

Methods, all scored by :meth:`PertTX.evaluate` / :func:`pertx_scvi.metrics.compare` on the held-out
targets (PertTX's profiles sampled from its likelihood and log-normalised per cell like the
observed ones): PertTX with the GO co-annotation and OmniPath graphs (one view each), the same model
with degree-preserving shuffled graphs, train-mean, control-mean and the graph-neighbour
average (GO + OmniPath). Metrics: Pearson of Δ on all genes and on the top-20 DE genes, MSE on
the top-20 DE genes, discrimination score; per fold, mean over folds, and split by the
strong-effect flag of ``compare``.

Before the CV, the step time of the label encoder and of the graph encoder is measured on the
same data at the default model size (batch 64; forward, loss, backward and AdamW step, the two
models alternating step by step on the same batches so that both see the same machine load),
to check that the graph encoder adds less than 20 % to a training step.

Writes ``folds.csv`` (tidy: fold, method, perturbation, metric, value, strong_effect),
``summary.csv``, ``step_time.csv`` and ``report.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pertx_scvi as px
from pertx_scvi import metrics as pm

METRICS = {
    "pearson_delta": "Pearson Δ (all genes)",
    "pearson_delta_top20": "Pearson Δ (top-20 DE)",
    "mse_top20": "MSE (top-20 DE)",
    "discrimination": "discrimination",
}
METHOD_NAMES = {
    "PertTX": "PertTX (GO + OmniPath)",
    "PertTX_shuffled": "PertTX (shuffled graphs)",
    "train_mean": "train-mean",
    "control_mean": "control-mean",
    "graph_neighbour": "graph-neighbour average",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def data_dir(path: str | None) -> Path:
    if path:
        return Path(path)
    if os.environ.get("PERTX_DATA_DIR"):
        return Path(os.environ["PERTX_DATA_DIR"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def folds_of(targets: list[str], n_folds: int = 5) -> list[list[str]]:
    """Sorted targets permuted with default_rng(0), cut into consecutive groups."""
    order = np.random.default_rng(0).permutation(sorted(targets))
    return [sorted(part.tolist()) for part in np.array_split(order, n_folds)]


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


def neighbour_edges(graphs, renamed: dict[str, str]):
    """Union edge table in the data's gene names, for the graph-neighbour baseline."""
    edges = px.GeneGraph.union(*graphs).edges[["source", "target", "weight"]].copy()
    back = {node: gene for gene, node in renamed.items()}
    for col in ("source", "target"):
        edges[col] = edges[col].astype(str).replace(back)
    return types.SimpleNamespace(edges=edges)


# ---- step time -------------------------------------------------------------------------------
def _training_batches(model, batch_size: int, seed: int = 0):
    """Paired training batches of ``model``'s registered data, as ``model.train`` builds them."""
    from pertx_scvi.data import ControlSampler, PairedBatchDataset, paired_loader

    cells = model._cell_arrays(model.adata, with_labels=True)
    is_control = np.isin(cells.label_codes, model._control_codes())
    sampler = ControlSampler(np.flatnonzero(is_control), cells.context, model._context_names())
    dataset = PairedBatchDataset(cells, np.arange(model.adata.n_obs), sampler, seed=seed)
    return paired_loader(dataset, batch_size, shuffle=True), cells


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
    loader, cells = _training_batches(models["label"], batch_size=64)
    optimizers = {}
    for encoder, model in models.items():
        module = model.module.train()
        codes = np.unique(cells.label_codes)
        genes = np.unique(model._label_gene_sets[codes])
        module.perturbation_encoder.trained_genes[torch.from_numpy(genes[genes >= 0])] = True
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


# ---- cross-validation --------------------------------------------------------------------------
def run_fold(fold, held, adata, fit_mask, graphs, shuffled, ids, baseline_graph, args, kwargs):
    """Train on the fold's targets with the real and the shuffled graphs; score all methods."""
    results = []
    timings = {}
    for name, gene_graph in (("PertTX", graphs), ("PertTX_shuffled", shuffled)):
        started = time.perf_counter()
        if args.threads:  # scanpy / numba in evaluate() resets the OpenMP thread count
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        model = px.PertTX(adata, gene_graph=list(gene_graph), id_table=ids, **kwargs)
        model.train(
            max_epochs=args.epochs,
            holdout_perturbations=held,
            control_cells=fit_mask,
            batch_size=args.batch_size,
            lr=args.lr,
            validation_size=0.0,
            seed=args.seed,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trained = time.perf_counter() - started
        # PertTX's profiles are sampled and log-normalised per cell like the observed ones
        # (model.evaluate's default for count likelihoods); the baselines see the same cells.
        baselines = None
        if name == "PertTX":
            train_cells = np.zeros(adata.n_obs, dtype=bool)
            train_cells[np.concatenate([model.train_indices, model.validation_indices])] = True
            baselines = pm.fit_baselines(
                adata[train_cells],
                "perturbation",
                "control",
                names=("control_mean", "train_mean", "graph_neighbour"),
                edges=baseline_graph.edges,
            )
        result = model.evaluate(perturbations=held, baselines=baselines, seed=args.seed)
        if name != "PertTX":
            result = result[result["method"] == "PertTX"].assign(method=name)
        results.append(result)
        timings[name] = (trained, time.perf_counter() - started - trained)
        log(
            f"fold {fold} {name}: trained {trained:.0f} s, evaluated "
            f"{timings[name][1]:.0f} s, final train loss "
            f"{float(model.history['train_loss'].iloc[-1, 0]):.3f}"
        )
    return pd.concat(results, ignore_index=True).assign(fold=fold), timings


def md_table(df: pd.DataFrame, index: bool = True) -> str:
    """A DataFrame as a markdown table (no tabulate dependency)."""
    frame = df.reset_index() if index else df

    def fmt(v) -> str:
        if isinstance(v, float | np.floating):
            return str(int(v)) if float(v).is_integer() else f"{v:.3f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in frame.itertuples(index=False)]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def fold_table(tidy: pd.DataFrame) -> pd.DataFrame:
    keep = tidy[tidy["metric"].isin(METRICS) & tidy["method"].isin(METHOD_NAMES)]
    table = keep.groupby(["metric", "method", "fold"])["value"].mean().unstack("fold")
    table["mean"] = table.mean(axis=1)
    return table


def markdown(tidy, summary, strong, steps, timings, args, total_s) -> str:
    lines = ["# Papalexi 2021: 5-fold CV over knockout targets (unseen genes)", ""]
    lines.append(
        f"Settings: epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, model "
        f"{args.model}, encoder multiview (GO, OmniPath), split-control. Total {total_s / 60:.1f} "
        "min."
    )
    lines.append("")
    if steps is not None and len(steps):
        lines += [
            "## Training step time (default model size, batch 64)",
            "",
            step_summary(steps) + ".",
            "",
        ]
    folds = fold_table(tidy)
    for metric, title in METRICS.items():
        if metric not in folds.index.get_level_values(0):
            continue
        sub = folds.loc[metric].reindex([m for m in METHOD_NAMES if m in folds.loc[metric].index])
        sub.index = pd.Index([METHOD_NAMES[m] for m in sub.index], name="method")
        lines += [f"## {title}", "", md_table(sub), ""]
    lines += ["## Mean over all held-out targets (95 % bootstrap CI)", ""]
    s = summary[summary["metric"].isin(METRICS) & summary["method"].isin(METHOD_NAMES)].copy()
    s["method"] = s["method"].map(METHOD_NAMES)
    lines += [md_table(s, index=False), ""]
    lines += ["## By strong effect (compare's strong_effect column)", ""]
    s = strong[strong["metric"].isin(METRICS) & strong["method"].isin(METHOD_NAMES)].copy()
    s["method"] = s["method"].map(METHOD_NAMES)
    lines += [md_table(s, index=False), ""]
    strong_targets = sorted(tidy.loc[tidy["strong_effect"].astype(bool), "perturbation"].unique())
    lines += [f"Strong-effect targets: {', '.join(strong_targets)}", ""]
    lines += ["## Timing per fold (s)", "", md_table(timings.round(0)), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="papalexi_cv_results")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--model", choices=("default", "small"), default="small")
    parser.add_argument("--folds", type=int, nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-time-steps", type=int, default=30)
    parser.add_argument("--step-time-only", action="store_true")
    parser.add_argument("--no-step-time", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started_all = time.perf_counter()

    root = data_dir(args.data_dir)
    adata = px.datasets.papalexi2021(root / "perturb" / "papalexi2021_thp1_subset.h5ad")
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    go, omnipath, ids = load_graphs(root)
    graphs = (go, omnipath)

    steps = None
    if not args.no_step_time:
        steps = step_time(adata, graphs, ids, args.step_time_steps, {})
        steps.to_csv(out / "step_time.csv", index=False)
        log("step time: " + step_summary(steps))
        if args.step_time_only:
            return

    shuffled = (go.shuffled(seed=0), omnipath.shuffled(seed=0))
    targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    folds = folds_of(targets)
    fit_mask, _ = pm.split_control(adata, "perturbation", "control", seed=args.seed)
    kwargs = (
        {}
        if args.model == "default"
        else {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_hidden": 64, "dropout": 0.0}
    )
    probe = px.PertTX(adata, gene_graph=list(graphs), id_table=ids, **kwargs)
    renamed = probe.graph_setup_.renamed
    log(f"graph prior: {probe.graph_setup_.summary()}")
    del probe
    baseline_graph = neighbour_edges(graphs, renamed)

    tidy, timing_rows = [], []
    for fold, held in enumerate(folds):
        if args.folds is not None and fold not in args.folds:
            continue
        started = time.perf_counter()
        log(f"fold {fold}: holding out {held}")
        result, timings = run_fold(
            fold, held, adata, fit_mask, graphs, shuffled, ids, baseline_graph, args, kwargs
        )
        tidy.append(result)
        seconds = time.perf_counter() - started
        timing_rows.append(
            {
                "fold": fold,
                "train_real_s": timings["PertTX"][0],
                "train_shuffled_s": timings["PertTX_shuffled"][0],
                "evaluate_s": timings["PertTX"][1] + timings["PertTX_shuffled"][1],
                "total_s": seconds,
            }
        )
        pd.concat(tidy).to_csv(out / "folds.csv", index=False)
        view = fold_table(result)
        log(f"fold {fold} done in {seconds / 60:.1f} min\n{view.round(3).to_string()}")

    tidy_all = pd.concat(tidy, ignore_index=True)
    tidy_all.to_csv(out / "folds.csv", index=False)
    summary = pm.summarize(tidy_all)
    strong = pm.summarize(tidy_all, by_strong_effect=True)
    summary.to_csv(out / "summary.csv", index=False)
    strong.to_csv(out / "summary_strong_effect.csv", index=False)
    timings = pd.DataFrame(timing_rows).set_index("fold")
    total = time.perf_counter() - started_all
    report = markdown(tidy_all, summary, strong, steps, timings, args, total)
    (out / "report.md").write_text(report)
    log(f"done in {total / 60:.1f} min; report at {out / 'report.md'}\n{report}")


if __name__ == "__main__":
    main()
