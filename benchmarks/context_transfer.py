"""Context transfer on McFaline-Figueroa 2023: kinase CRISPRi targets in three glioma lines.

Each (perturbation, cell line) pair is held out once (:func:`pertx_scvi.benchmark.context_transfer`,
3 folds): PertTX, trained on every other pair with the GO graph, predicts it from the line's own
controls, beside ``train_mean`` of the line and ``other_contexts_mean`` (the perturbation's mean
effect in the other two lines). The model has the benchmark's default settings
(:data:`pertx_scvi.benchmark.DEFAULTS`: d_model 64, 2 layers, 4 heads, 2 epochs, batch 64,
lr 1e-2); nothing is tuned on the held-out pairs. Writes ``summary.md``, ``summary.csv``,
``paired.csv``, ``metrics.csv``, ``folds.csv`` and a ``README.md`` (command, commit, wall
time) to ``--out``::

    python benchmarks/context_transfer.py --threads 1 --out docs/results/mcfaline23
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pertx_scvi as px
from pertx_scvi.benchmark import DEFAULTS, context_transfer


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()


def _commit() -> str:
    """Short hash of HEAD, noting uncommitted changes."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{commit}`" + (" (with uncommitted changes of the working tree)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", default="mcfaline23", help="PerturBench screen")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--graph", default="go", help="graph names (pertx benchmark --graph)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", default="docs/results/mcfaline23")
    args = parser.parse_args()

    command = "python benchmarks/context_transfer.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    adata = px.datasets.perturbench(args.screen)
    result = context_transfer(
        adata,
        "perturbation",
        "control",
        "cell_type",
        n_folds=args.folds,
        seed=args.seed,
        train_kwargs={"max_epochs": args.epochs},
        graph=None if args.graph.lower() == "none" else args.graph,
        out=args.out,
        n_boot=args.n_boot,
        threads=args.threads,
        command=command,
        data_name=f"{args.screen} (PerturBench development file, log-normalised values)",
    )
    wall = time.perf_counter() - started
    commit = _commit()
    readme = f"""# Context transfer: {args.screen}

Each (kinase CRISPRi target, glioma line) pair of McFaline-Figueroa et al. 2023 (PerturBench
development file, `dataset == "{args.screen}"`: 9 targets in T98G, U87MG and A172, 100
controls per line) is held out once and predicted from its own line's controls, by PertTX
(trained on the other pairs, GO graph) and by the baselines `train_mean` (mean effect of the
line's training perturbations), `train_mean_knockdown` (the same plus the knockdown prior on
the target gene), `other_contexts_mean` (the target's mean effect in the other two lines,
effects against each line's own controls) and `control_mean`.

- command: `{command}`
- commit: {commit}
- wall time: {wall / 60:.1f} min ({wall:.0f} s, {args.threads} torch thread(s), CPU)
- settings: {args.folds} folds, seed {args.seed}; PertTX d_model {DEFAULTS["d_model"]}, \
{DEFAULTS["n_layers"]} layers, {DEFAULTS["n_heads"]} heads, {args.epochs} epochs, batch size \
{DEFAULTS["batch_size"]}, lr {DEFAULTS["lr"]:g}, graph `{args.graph}` (the `pertx benchmark` \
defaults; nothing tuned on the held-out pairs)

Files: `summary.md` (means per line and overall, PertTX minus each baseline paired over the
held-out pairs), `summary.csv`, `paired.csv`, `metrics.csv` (every metric per method and
pair), `folds.csv` (held-out pairs and training of each fold).
"""
    (Path(args.out) / "README.md").write_text(readme)
    print((Path(args.out) / "summary.md").read_text())
    print(f"wall time {wall:.0f} s; {len(result.metrics)} metric rows")


if __name__ == "__main__":
    main()
