"""Training and prediction throughput of PertTX and of the upstream pertTF, measured in one run.

Full run (the figures of docs/benchmark.md; about 12 minutes on an idle 2-core machine)::

    python benchmarks/speed.py --out speed --cells 4096 --threads 2

Quick check that every part runs (a few minutes)::

    python benchmarks/speed.py --out /tmp/speed_smoke --cells 512 --wide-genes 299,2000 \\
        --only perttf,papalexi,wide --papalexi perttf,default

What it measures, in cells per second:

- **pertTF** (upstream, PyPI ``perttf`` 0.1.1), through ``benchmarks/_perttf_driver.py`` run by the
  python of its own virtual environment (``--perttf-python``; it never shares a process with
  PertTX): one epoch of pertTF's own training loop on the Papalexi 2021 cells below, at its size
  (d_model 64, 2 layers, 4 heads, 64 hidden units, all 299 genes as tokens, batch 64, dropout
  0.4, DataLoader with ``--perttf-workers`` workers, 0 by default: pertTF's hard-coded 8 compete
  with the training threads on a small machine), and pertTF's prediction path
  (``eval_testdata(predict_expr=True)``) for the same source cells and perturbations as PertTX.
  Without that python the pertTF row says "not measured" and no ratio is printed: no peer
  figure is written into this script.
- **Papalexi 2021** (PertTX, ``--papalexi`` picks rows): the default model; the default with
  ``max_genes=128``; the pertTF size (its d_model, layers, heads and hidden units; every gene a
  token); at that size the target cell masked (two encoder passes per pair, this package's
  earlier design) and the unfused ``native`` attention. ``x pertTF`` columns: PertTX over the
  pertTF figure of the same run.
- **Wide panels** (``--wide-genes``): simulated screens (``px.datasets.simulate``) of 299, 2,000
  and 5,000 genes at the default settings (``max_genes="auto"``: every gene a token up to 512
  genes, 256 tokens, expressed genes first, above; every gene still decoded).
- **Heads** (simulated screen of 299 genes, 3 cell types, a phenotype score; default size): the
  cost of each extra head against none.

Every PertTX configuration is trained for one epoch on ``--cells`` cells through the public API
(``model.train``, no validation share, batch 64) and predicts up to 1,000 control cells x 2
perturbations (``predict_perturbation``). Training speed, both sides: 64 cells over the median
step time, a step being the time from one batch's start to the next (forward, backward,
optimiser step, logging and fetching the next batch; the first 2 steps are left out), and end to
end (cells over the wall time of ``model.train``, or of pertTF's data set-up and epoch). The
compute part of a step alone is reported too (``train_cells_per_s_compute``).

Each configuration runs in a fresh subprocess (``--in-process`` to turn that off), so its peak
RSS is its own and no allocator or thread-pool state carries from one to the next;
``--repeats`` runs every configuration several times, rounds interleaved, and reports medians.
Writes ``speed.csv`` (every row), ``speed.json`` (rows and run settings) and ``speed.md``.

The pertTF environment (torch first, so that pip keeps the CPU build instead of pulling CUDA)::

    python3.11 -m venv /work/perttf-venv
    /work/perttf-venv/bin/pip install torch==2.13.0
    /work/perttf-venv/bin/pip install perttf==0.1.1 "wandb<0.29" omegaconf
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "_perttf_driver.py"
DEFAULT_PERTTF_PYTHON = Path("/work/perttf-venv/bin/python")
PAPALEXI_FILE = "perturb/papalexi2021_thp1_subset.h5ad"
PARTS = ("perttf", "papalexi", "wide", "heads")
WIDE_GENES = (299, 2000, 5000)

PERTTF_SIZE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hidden": 64, "max_genes": None}
# --papalexi key: (row name, PertTX arguments)
PAPALEXI = {
    "default": ("default", {}),
    "max128": ("default, max_genes=128", {"max_genes": 128}),
    "perttf": ("pertTF size", PERTTF_SIZE),
    "target": ("pertTF size, target masked (2 passes)", {**PERTTF_SIZE, "mlm_cell": "target"}),
    "native": ("pertTF size, native attention", {**PERTTF_SIZE, "attention_backend": "native"}),
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
# Enough simulated cells for --cells up to 9,000 (1,500 controls + 50 labels x 150).
SIMULATED = {"n_control_cells": 1500, "n_cells_per_perturbation": 150}
BATCH = 64
SKIP_STEPS = 2
PREDICT_CONTROLS = 1000
PREDICT_PERTURBATIONS = 2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def papalexi_file(data_path: str | None) -> Path:
    """The Papalexi h5ad: ``--data-path``, ``$PERTX_DATA_DIR``, the cache, then the shared folder
    beside this checkout (where this project keeps its data)."""
    from pertx_scvi.datasets import find_data_file

    try:
        return Path(find_data_file(PAPALEXI_FILE, data_path))
    except FileNotFoundError:
        if data_path is not None:
            raise
        shared = HERE.parents[1] / "shared" / "data"
        return Path(find_data_file(PAPALEXI_FILE, shared))


# ---- PertTX, one configuration -------------------------------------------------------------------
def make_step_timer():
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        """Start and end time of every training batch."""

        def __init__(self):
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
            self.ends.append(time.perf_counter())

    return StepTimer()


def load_data(spec: dict):
    import pertx_scvi as px

    if spec["source"] == "papalexi":
        return px.datasets.papalexi2021(spec["path"])
    adata, _, _ = px.datasets.simulate(**spec["simulate"])
    return adata


def measure_pertx(job: dict) -> dict:
    """Train one PertTX configuration for an epoch and time it and its prediction."""

    import lightning.pytorch  # noqa: F401  (imported here: importing it resets its log level)
    import torch

    import pertx_scvi as px

    # Lightning's banners and deprecation notices would bury the progress lines
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    threads = torch.get_num_threads()
    adata = load_data(job["data"])
    rng = np.random.default_rng(job["seed"])
    keep = np.sort(rng.choice(adata.n_obs, min(job["cells"], adata.n_obs), replace=False))
    subset = adata[keep].copy()
    del adata
    px.PertTX.setup_anndata(
        subset, perturbation_key="perturbation", control_group="control", **job["setup"]
    )
    torch.manual_seed(job["seed"])
    model = px.PertTX(subset, **job["kwargs"])
    timer = make_step_timer()
    # data loading (scanpy, numba) may have reset the OpenMP pool torch shares
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model.train(
        max_epochs=1,
        validation_size=0.0,
        batch_size=BATCH,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    train_seconds = time.perf_counter() - started
    full = np.diff(timer.starts)[SKIP_STEPS:]
    compute = (np.array(timer.ends) - np.array(timer.starts))[SKIP_STEPS:]
    if len(full) == 0:  # too few steps to leave the first ones out
        full, compute = np.diff(timer.starts), np.array(timer.ends) - np.array(timer.starts)

    controls = subset[subset.obs["perturbation"] == "control"][:PREDICT_CONTROLS]
    labels = [p for p in subset.obs["perturbation"].unique() if p != "control"]
    torch.set_num_threads(threads)
    started = time.perf_counter()
    prediction = model.predict_perturbation(controls, labels[:PREDICT_PERTURBATIONS])
    predict_seconds = time.perf_counter() - started
    max_genes = model.module.max_genes
    return {
        "group": job["group"],
        "config": job["config"],
        "genes": int(subset.n_vars),
        "tokens": int(max_genes or subset.n_vars),
        "attention": model.module.encoder.backend,
        "threads": threads,
        "steps": len(timer.starts),
        "train_cells_per_s": BATCH / float(np.median(full)) if len(full) else np.nan,
        "train_cells_per_s_compute": BATCH / float(np.median(compute)),
        "train_cells_per_s_end_to_end": len(model.train_indices) / train_seconds,
        "predict_cells_per_s": prediction.n_obs / predict_seconds,
        "predicted_cells": int(prediction.n_obs),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


# ---- pertTF --------------------------------------------------------------------------------------
def measure_perttf(args, h5ad: Path, python: Path | None) -> dict:
    """pertTF's row: its driver in its own environment, or 'not measured'."""
    row = {"group": "pertTF", "config": "pertTF 0.1.1 (upstream), its size", "genes": 299}
    if python is None:
        log("pertTF: no python with perttf (--perttf-python): not measured, no ratio")
        return {**row, "note": "not measured"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "perttf.json"
        command = [str(python), str(DRIVER), "--h5ad", str(h5ad), "--cells", str(args.cells)]
        command += ["--seed", str(args.seed), "--workers", str(args.perttf_workers)]
        command += ["--batch-size", str(BATCH), "--skip-steps", str(SKIP_STEPS)]
        command += ["--predict-controls", str(PREDICT_CONTROLS)]
        command += ["--predict-perturbations", str(PREDICT_PERTURBATIONS), "--out", str(out)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        log(f"pertTF: {' '.join(command)}")
        started = time.perf_counter()
        # pertTF's own prints and warnings go to a log file, not into the table
        log_file = Path(args.out) / "perttf_driver.log"
        with open(log_file, "a") as handle:
            done = subprocess.run(
                command, env=child_env(args), stdout=handle, stderr=subprocess.STDOUT
            )
        if done.returncode != 0 or not out.exists():
            log(f"pertTF driver failed (exit {done.returncode}); see {log_file}")
            return {**row, "note": f"failed (exit {done.returncode}, see perttf_driver.log)"}
        result = json.loads(out.read_text())
    log(f"pertTF done in {time.perf_counter() - started:.0f} s")
    return {
        **row,
        "genes": result["genes"],
        "tokens": result["tokens"] - 1,  # its <cls> token aside, as PertTX's count
        "attention": "torch nn.TransformerEncoder",
        "threads": result["threads"],
        "steps": result["steps"],
        "train_cells_per_s": result["train_cells_per_s"],
        "train_cells_per_s_compute": result["train_cells_per_s_compute"],
        "train_cells_per_s_end_to_end": result["train_cells_per_s_end_to_end"],
        "predict_cells_per_s": result.get("predict_cells_per_s", np.nan),
        "predicted_cells": result.get("predicted_cells", 0),
        "peak_rss_gb": result["peak_rss_gb"],
        "note": f"{result['workers']} DataLoader workers",
    }


def perttf_python(option: str | None) -> Path | None:
    if option:
        path = Path(option)
        if not path.exists():
            raise SystemExit(f"--perttf-python {option} does not exist")
        return path
    return DEFAULT_PERTTF_PYTHON if DEFAULT_PERTTF_PYTHON.exists() else None


# ---- running -------------------------------------------------------------------------------------
def child_env(args) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", TQDM_DISABLE="1")
    if args.threads:
        # bound every OpenMP/BLAS pool of the child, not only torch's intra-op one
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(args.threads)
    return env


def run_job(job: dict, args) -> dict:
    if args.in_process:
        return measure_pertx(job)
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "job.json", Path(tmp) / "row.json"
        spec.write_text(json.dumps(job))
        command = [sys.executable, __file__, "--worker", str(spec), "--worker-out", str(out)]
        done = subprocess.run(command, env=child_env(args))
        if done.returncode != 0 or not out.exists():
            log(f"{job['config']}: failed (exit {done.returncode})")
            return {"group": job["group"], "config": job["config"], "note": "failed"}
        return json.loads(out.read_text())


def build_jobs(args, h5ad: Path, parts: set[str]) -> list[dict]:
    base = {"cells": args.cells, "seed": args.seed, "threads": args.threads}
    jobs = []
    if "papalexi" in parts:
        unknown = set(args.papalexi) - set(PAPALEXI)
        if unknown:
            raise SystemExit(f"--papalexi: unknown rows {sorted(unknown)}; known: {list(PAPALEXI)}")
        data = {"source": "papalexi", "path": str(h5ad)}
        for key in args.papalexi:
            name, kwargs = PAPALEXI[key]
            jobs.append({**base, "group": "Papalexi 2021", "config": name, "data": data,
                         "setup": {}, "kwargs": kwargs})  # fmt: skip
    if "wide" in parts:
        for genes in args.wide_genes:
            data = {"source": "simulate", "simulate": {"n_genes": genes, **SIMULATED}}
            jobs.append({**base, "group": "wide panel", "config": f"default, {genes:,} genes",
                         "data": data, "setup": {}, "kwargs": {}})  # fmt: skip
    if "heads" in parts:
        simulate = {"n_genes": 299, "n_cell_types": 3, **SIMULATED}
        setup = {"cell_type_key": "cell_type", "phenotype_keys": ["phenotype"]}
        for name, kwargs in HEADS.items():
            jobs.append({**base, "group": "heads", "config": name, "setup": setup,
                         "data": {"source": "simulate", "simulate": simulate},
                         "kwargs": kwargs})  # fmt: skip
    return jobs


def median_rows(rounds: list[list[dict]]) -> pd.DataFrame:
    """One row per configuration: the median of its numbers over the rounds."""
    table = pd.DataFrame([row for rows in rounds for row in rows])
    keys = ["group", "config"]
    numeric = [
        c for c in table.columns if c not in keys and pd.api.types.is_numeric_dtype(table[c])
    ]
    other = [c for c in table.columns if c not in keys and c not in numeric]
    grouped = table.groupby(keys, sort=False)
    out = grouped[numeric].median()
    if other:
        out = out.join(grouped[other].first())
    out["repeats"] = grouped.size()
    return out.reset_index()


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """PertTX over pertTF of this run, on the same Papalexi cells; NaN elsewhere."""
    perttf = table[table["group"] == "pertTF"]
    same_data = table["group"] == "Papalexi 2021"
    for what in ("train", "predict"):
        column = f"{what}_cells_per_s"
        peer = perttf[column].iloc[0] if len(perttf) and column in perttf else np.nan
        table[f"{what}_x_pertTF"] = np.where(same_data, table.get(column, np.nan) / peer, np.nan)
    return table


def markdown(table: pd.DataFrame, settings: dict) -> str:
    def number(value, digits=0):
        return "" if pd.isna(value) else f"{value:,.{digits}f}"

    lines = [
        "# Speed (cells/s)",
        "",
        f"`{settings['command']}`",
        "",
        f"{settings['when']}, commit {settings['commit']}, {settings['cpus']} CPUs, load average "
        f"at start {settings['load_average']}, torch threads {settings['threads'] or 'default'}, "
        f"{settings['cells']} cells, batch {BATCH}, {settings['repeats']} repeat(s) "
        f"({'one subprocess per configuration' if not settings['in_process'] else 'in process'}).",
        "",
        "| group | configuration | genes | tokens | train | train (compute) | train (end to end) "
        "| x pertTF | predict | x pertTF | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        note = row.get("note")
        if isinstance(note, str) and note.startswith(("not measured", "failed")):
            lines.append(f"| {row['group']} | {row['config']} | | | {note} | | | | | | |")
            continue
        lines.append(
            f"| {row['group']} | {row['config']} | {number(row.get('genes'))} "
            f"| {number(row.get('tokens'))} | {number(row['train_cells_per_s'])} "
            f"| {number(row['train_cells_per_s_compute'])} "
            f"| {number(row['train_cells_per_s_end_to_end'])} "
            f"| {number(row['train_x_pertTF'], 1)} | {number(row['predict_cells_per_s'])} "
            f"| {number(row['predict_x_pertTF'], 1)} | {number(row.get('peak_rss_gb'), 2)} |"
        )
    if table["train_x_pertTF"].isna().all() and (table["group"] == "Papalexi 2021").any():
        lines += ["", "pertTF not measured in this run: no ratio."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The module docstring describes what is measured and how.",
    )
    parser.add_argument("--out", default="speed_results", help="output folder")
    parser.add_argument("--cells", type=int, default=4096, help="training cells per run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads, both sides")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cell subset and models")
    parser.add_argument("--data-path", default=None, help="Papalexi h5ad or data folder")
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--papalexi",
        default=",".join(PAPALEXI),
        help="comma-separated Papalexi rows to run, of "
        + "; ".join(f"{key} ({name})" for key, (name, _) in PAPALEXI.items())
        + " (default: all)",
    )
    parser.add_argument(
        "--wide-genes",
        default=",".join(map(str, WIDE_GENES)),
        help="comma-separated panel widths of the wide-panel rows",
    )
    parser.add_argument("--no-heads", action="store_true", help="skip the head rows")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; medians are reported")
    parser.add_argument(
        "--perttf-python",
        default=None,
        help=f"python of the pertTF environment (default: {DEFAULT_PERTTF_PYTHON} if it exists)",
    )
    parser.add_argument(
        "--perttf-workers", type=int, default=0, help="pertTF DataLoader workers (default 0)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run PertTX configurations in this process (peak RSS is then the process's)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.papalexi = [key.strip() for key in args.papalexi.split(",") if key.strip()]
    args.wide_genes = [int(g) for g in args.wide_genes.split(",") if g]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        row = measure_pertx(json.loads(Path(args.worker).read_text()))
        Path(args.worker_out).write_text(json.dumps(row))
        return
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if not parts <= set(PARTS):
        raise SystemExit(f"--only: unknown parts {sorted(parts - set(PARTS))}; known: {PARTS}")
    if args.no_heads:
        parts.discard("heads")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h5ad = papalexi_file(args.data_path) if parts & {"perttf", "papalexi"} else None
    python = perttf_python(args.perttf_python) if "perttf" in parts else None
    jobs = build_jobs(args, h5ad, parts)
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    settings = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit or "unknown",
        "cpus": os.cpu_count(),
        "load_average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": platform.platform(),
        "threads": args.threads,
        "cells": args.cells,
        "repeats": args.repeats,
        "in_process": args.in_process,
        "perttf_python": str(python) if python else None,
        "perttf_workers": args.perttf_workers,
    }
    log(f"{len(jobs)} PertTX configuration(s){' + pertTF' if 'perttf' in parts else ''}, "
        f"{args.repeats} round(s); results in {out}")  # fmt: skip
    rounds = []
    for repeat in range(args.repeats):
        rows = []
        if "perttf" in parts:
            rows.append(measure_perttf(args, h5ad, python))
        for i, job in enumerate(jobs, 1):
            log(f"round {repeat + 1}, {i}/{len(jobs)}: {job['group']}: {job['config']}")
            started = time.perf_counter()
            row = run_job(job, args)
            rows.append(row)
            shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
            log(f"  {time.perf_counter() - started:.0f} s: {shown}")
        rounds.append(rows)
    table = add_ratios(median_rows(rounds))
    table.to_csv(out / "speed.csv", index=False)
    (out / "speed.json").write_text(
        json.dumps({"settings": settings, "rows": table.to_dict(orient="records")}, indent=1)
    )
    text = markdown(table, settings)
    (out / "speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
