"""Out-of-core training: one epoch on a screen read from disk (backed h5ad), at two sizes.

Usage::

    python benchmarks/out_of_core.py --out out_of_core_results [--cells 200000]
        [--small-cells 20000] [--genes 200] [--threads 2] [--model small]

Writes a simulated screen (:func:`pertx_scvi.datasets.simulate`, sparse CSR counts) of
``--small-cells`` and of ``--cells`` cells to h5ad files, each in chunks of at most
``--chunk-cells`` cells (simulated with seeds ``seed``, ``seed + 1``, ...: independent screens
with the same genes and labels, so that writing never holds more than one chunk), then trains
one epoch on each file opened with ``anndata.read_h5ad(path, backed="r")`` through the public
API (``setup_anndata``, ``PertTX``, ``model.train(max_epochs=1)``). Each run is its own
subprocess, so its peak resident memory (``ru_maxrss`` of the child) is its own. With
``--in-memory``, the small file is also trained on loaded into memory, as a reference.

Per run: training speed (training cells over the wall time of the epoch's training batches,
measured by a Lightning callback; validation and start-up left out), the end-to-end time of
``model.train``, the time of setup and model creation, and the peak RSS. Acceptance: the
large run's peak RSS at most 1.5 times the small run's, and its per-cell speed within 20 % of
the small run's.

Then, in one more subprocess, every cell of the large screen (backed) serves as a source for 2
perturbations, predicted to an ``.h5ad`` file block by block
(``predict_perturbation(..., output="h5ad")``, X the exact expectation plus one count draw per
predicted cell): predicted cells/s and peak RSS (acceptance: under 2 GB). The weights are those
of a new model (prediction costs the same for any weights). ``--no-predict`` skips it. Writes
``out_of_core.csv`` and ``out_of_core.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = {
    "small": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_hidden": 64},
    "default": {},
}
N_REGULATORS, N_COMBINATIONS = 40, 10
SETUP = {"perturbation_key": "perturbation", "control_group": "control"}
MAX_RSS_RATIO, MAX_SPEED_CHANGE = 1.5, 0.2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the screens on disk -------------------------------------------------------------------------
def simulated_chunk(n_cells: int, n_genes: int, seed: int):
    """A simulated screen of about ``n_cells`` cells (a tenth controls)."""
    import pertx_scvi as px

    n_labels = N_REGULATORS + N_COMBINATIONS
    per_label = max(1, int(0.9 * n_cells) // n_labels)
    adata, _, _ = px.datasets.simulate(
        n_genes=n_genes,
        n_regulators=N_REGULATORS,
        n_combinations=N_COMBINATIONS,
        n_control_cells=max(2, n_cells - per_label * n_labels),
        n_cells_per_perturbation=per_label,
        seed=seed,
    )
    return adata


def write_screen(path: Path, n_cells: int, n_genes: int, chunk_cells: int, seed: int) -> None:
    """A screen of ``n_cells`` cells written to ``path`` chunk by chunk (sparse CSR X appended
    on disk; obs, small, written at the end)."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    io = getattr(ad, "io", None) or ad.experimental  # anndata < 0.11: experimental
    obs, written = [], 0
    with h5py.File(path, "w") as file:
        matrix = None
        for number, start in enumerate(range(0, n_cells, chunk_cells)):
            size = min(chunk_cells, n_cells - start)
            chunk = simulated_chunk(size, n_genes, seed + number)
            counts = sp.csr_matrix(chunk.X, dtype=np.float32)
            if matrix is None:
                io.write_elem(file, "X", counts)
                matrix = io.sparse_dataset(file["X"])
                var = chunk.var
            else:
                matrix.append(counts)
            labels = chunk.obs[["perturbation"]].astype(str)
            labels.index = [f"cell{written + i}" for i in range(chunk.n_obs)]
            obs.append(labels)
            written += chunk.n_obs
            log(f"  {path.name}: {written:,} of about {n_cells:,} cells written")
            del chunk, counts
        table = pd.concat(obs)
        table["perturbation"] = table["perturbation"].astype("category")
        io.write_elem(file, "obs", table)
        io.write_elem(file, "var", var)


# ---- one run (in a subprocess) --------------------------------------------------------------------
def make_timer(n_batches_hint: int):
    import lightning.pytorch as pl

    class EpochTimer(pl.Callback):
        """Wall time of the epoch's training batches; prints progress every tenth."""

        def __init__(self):
            self.start = self.end = None
            self.batches = 0

        def on_train_epoch_start(self, trainer, pl_module):  # noqa: D102
            self.start = time.perf_counter()
            self.total = int(trainer.num_training_batches) or n_batches_hint

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
            self.end = time.perf_counter()
            self.batches += 1
            if self.batches % max(1, self.total // 10) == 0:
                rate = self.batches / (self.end - self.start)
                log(f"    batch {self.batches:,} of {self.total:,} ({rate:.1f} batches/s)")

    return EpochTimer()


def run_child(job: dict) -> dict:
    """Train one epoch on ``job["path"]`` (backed, or in memory) and measure it."""
    import anndata as ad
    import torch

    import pertx_scvi as px

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    adata = ad.read_h5ad(job["path"], backed=None if job["in_memory"] else "r")
    px.PertTX.setup_anndata(adata, **SETUP)
    torch.manual_seed(job["seed"])
    model = px.PertTX(adata, **MODELS[job["model"]])
    setup_seconds = time.perf_counter() - started
    log(f"  {adata.n_obs:,} cells set up and model built in {setup_seconds:.1f} s")
    timer = make_timer(adata.n_obs // job["batch_size"])
    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    model.train(
        max_epochs=1,
        batch_size=job["batch_size"],
        seed=job["seed"],
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    train_seconds = time.perf_counter() - started
    epoch_seconds = timer.end - timer.start
    n_train = len(model.train_indices)
    return {
        "cells": int(adata.n_obs),
        "backed": bool(adata.isbacked),
        "training cells": n_train,
        "batches": timer.batches,
        "epoch s": epoch_seconds,
        "cells/s": n_train / epoch_seconds,
        "train() s": train_seconds,
        "setup s": setup_seconds,
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def run_prediction(job: dict) -> dict:
    """Predict every cell of ``job["path"]`` (backed) x 2 perturbations to an h5ad file."""
    import anndata as ad
    import torch

    import pertx_scvi as px

    torch.set_num_threads(job["threads"])
    adata = ad.read_h5ad(job["path"], backed="r")
    px.PertTX.setup_anndata(adata, **SETUP)
    torch.manual_seed(job["seed"])
    model = px.PertTX(adata, **MODELS[job["model"]])
    # The cost of a prediction does not depend on the weights: mark the model trained (and its
    # perturbed genes known, as train() does) instead of training it on 200k cells again.
    trained = model._make_datamodule(validation_size=0.0).trained_gene_positions()
    model.module.perturbation_encoder.trained_genes[torch.from_numpy(trained)] = True
    model.is_trained_ = True
    perturbations = ["REG00", "REG01+REG02"]
    target = Path(job["path"]).with_suffix(".predicted.h5ad")
    started = time.perf_counter()
    model.predict_perturbation(
        adata, perturbations, output="h5ad", path=target, overwrite=True, batch_size=512
    )
    seconds = time.perf_counter() - started
    n_predicted = adata.n_obs * len(perturbations)
    size = target.stat().st_size
    target.unlink()
    return {
        "cells": int(adata.n_obs),
        "predicted cells": n_predicted,
        "predict s": seconds,
        "predicted cells/s": n_predicted / seconds,
        "file MiB": size / 2**20,
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def measure(path: Path, args, in_memory: bool = False, predict: bool = False) -> dict:
    """:func:`run_child` in a fresh interpreter (its own peak RSS)."""
    job = {
        "path": str(path),
        "in_memory": in_memory,
        "threads": args.threads,
        "seed": args.seed,
        "model": args.model,
        "batch_size": args.batch_size,
        "predict": predict,
    }
    suffix = ".predict.json" if predict else ".in_memory.json" if in_memory else ".json"
    result = path.with_suffix(suffix)
    command = [sys.executable, __file__, "--child", json.dumps(job), "--result", str(result)]
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


# ---- report -----------------------------------------------------------------------------------------
def report(rows: list[dict], args, prediction: dict | None = None) -> str:
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "out_of_core.csv", index=False)
    backed = table[table["backed"]].set_index("cells")
    small, large = backed.loc[args.small_cells_written], backed.loc[args.cells_written]
    rss_ratio = large["peak RSS MiB"] / small["peak RSS MiB"]
    speed_ratio = large["cells/s"] / small["cells/s"]
    shown = table.copy()
    shown["data"] = np.where(shown["backed"], "backed h5ad", "in memory")
    shown = shown.drop(columns=["backed"])
    for column, digits in (("epoch s", 1), ("cells/s", 1), ("train() s", 1), ("setup s", 1)):
        shown[column] = shown[column].round(digits)
    shown["peak RSS MiB"] = shown["peak RSS MiB"].round(0).astype(int)
    lines = [
        "# Out-of-core training",
        "",
        f"One epoch of PertTX (`{args.model}` size: {MODELS[args.model] or 'defaults'}, batch "
        f"{args.batch_size}, {args.threads} thread(s)) on simulated screens of {args.genes} genes "
        "written as sparse CSR h5ad and opened with `backed='r'`; each run in its own process.",
        "",
        _markdown(shown[["data", *[c for c in shown.columns if c != "data"]]]),
        "",
        f"- peak RSS, {args.cells_written:,} vs {args.small_cells_written:,} cells: "
        f"{rss_ratio:.2f}x (target at most {MAX_RSS_RATIO}x): "
        f"{'met' if rss_ratio <= MAX_RSS_RATIO else 'NOT met'}",
        f"- training speed per cell, {args.cells_written:,} vs {args.small_cells_written:,} "
        f"cells: {speed_ratio:.2f}x (target within {MAX_SPEED_CHANGE:.0%}): "
        f"{'met' if abs(speed_ratio - 1) <= MAX_SPEED_CHANGE else 'NOT met'}",
    ]
    if prediction is not None:
        pd.DataFrame([prediction]).to_csv(args.out / "out_of_core_predict.csv", index=False)
        rss = prediction["peak RSS MiB"]
        lines += [
            f"- prediction to disk: {prediction['cells']:,} backed cells x 2 perturbations = "
            f"{prediction['predicted cells']:,} predicted cells (X exact, one count draw each) "
            f"in {prediction['predict s']:.0f} s, {prediction['predicted cells/s']:,.0f} "
            f"predicted cells/s, a {prediction['file MiB']:,.0f} MiB h5ad; peak RSS {rss:,.0f} "
            f"MiB (target under 2 GB): {'met' if rss < 2048 else 'NOT met'}",
        ]
    text = "\n".join(lines) + "\n"
    (args.out / "out_of_core.md").write_text(text)
    return text


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = [
        "| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out_of_core_results"))
    parser.add_argument("--cells", type=int, default=200_000, help="cells of the large screen")
    parser.add_argument("--small-cells", type=int, default=20_000, help="cells of the small one")
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--chunk-cells", type=int, default=20_000, help="cells simulated at once")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-memory", action="store_true", help="also the small screen in memory")
    parser.add_argument("--keep-files", action="store_true", help="keep the h5ad files")
    parser.add_argument("--no-predict", action="store_true", help="skip the prediction run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        run = run_prediction if job.get("predict") else run_child
        Path(args.result).write_text(json.dumps(run(job)))
        return

    if args.cells <= args.small_cells:
        parser.error(f"--cells ({args.cells}) must exceed --small-cells ({args.small_cells})")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    paths = {}
    for n_cells in (args.small_cells, args.cells):
        path = args.out / f"screen_{n_cells}.h5ad"
        log(f"writing {path} ({n_cells:,} cells, {args.genes} genes)")
        write_screen(path, n_cells, args.genes, args.chunk_cells, args.seed)
        paths[n_cells] = path
    for path in paths.values():
        log(f"training one epoch on {path.name}, backed")
        rows.append(measure(path, args))
        log(f"  {rows[-1]['cells/s']:.1f} cells/s, peak RSS {rows[-1]['peak RSS MiB']:.0f} MiB")
    args.small_cells_written, args.cells_written = rows[0]["cells"], rows[1]["cells"]
    if args.in_memory:
        log(f"training one epoch on {paths[args.small_cells].name}, in memory")
        rows.append(measure(paths[args.small_cells], args, in_memory=True))
        log(f"  {rows[-1]['cells/s']:.1f} cells/s, peak RSS {rows[-1]['peak RSS MiB']:.0f} MiB")
    prediction = None
    if not args.no_predict:
        log(f"predicting {paths[args.cells].name} x 2 perturbations to an h5ad file, backed")
        prediction = measure(paths[args.cells], args, predict=True)
        log(
            f"  {prediction['predicted cells/s']:.0f} predicted cells/s, peak RSS "
            f"{prediction['peak RSS MiB']:.0f} MiB"
        )
    print(report(rows, args, prediction))
    if not args.keep_files:
        for path in paths.values():
            for suffix in (".json", ".in_memory.json", ".predict.json"):
                path.with_suffix(suffix).unlink(missing_ok=True)
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
