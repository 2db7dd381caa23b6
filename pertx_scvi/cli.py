"""The ``pertx`` command: ``pertx demo``, ``pertx benchmark``, and the model on the command
line: ``pertx train``, ``pertx predict``, ``pertx screen``."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger("pertx_scvi")

EXIT_CTRL_C, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as shells report them


class Terminated(KeyboardInterrupt):
    """Raised by the ``pertx`` command's SIGTERM handler.

    A KeyboardInterrupt, so that Lightning stops training the way it does on Ctrl-C
    (:class:`~pertx_scvi._model.TrainingInterrupted` follows) and the command can say what it
    kept before it exits with status 143.
    """


_terminated = threading.Event()


def _on_sigterm(signum, frame) -> None:
    if _terminated.is_set():  # a second SIGTERM: stop at once
        os._exit(EXIT_SIGTERM)
    _terminated.set()
    raise Terminated("SIGTERM")


def install_sigterm_handler():
    """Make SIGTERM raise :class:`Terminated` (main thread only); return the previous handler."""
    _terminated.clear()
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _kept(command: str, out: Path) -> str:
    """What an interrupted command leaves in ``out``."""
    if command == "train":
        return f"the model was not saved to {out}"
    if command in ("predict", "screen"):
        return f"{out} was not written"
    if command == "benchmark":
        folds = sorted((out / "folds").glob("fold_*.json")) if (out / "folds").is_dir() else []
        if not folds:
            return f"no fold had finished; nothing to resume from in {out}"
        return (
            f"kept {len(folds)} finished fold(s) in {out / 'folds'}; run the same command again "
            "to resume from them"
        )
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not files:
        return f"nothing was written to {out}"
    return f"the demo did not finish: {out} holds only {files}"


def _simulated_task(seed: int):
    """Simulated screen; held out: unseen combinations whose genes were each trained alone."""
    from . import datasets

    adata, truth, network = datasets.simulate(n_combinations=12, seed=seed)
    combinations = sorted(label for label in truth.index if "+" in label)
    holdout = [str(c) for c in np.random.default_rng(seed).choice(combinations, 4, replace=False)]
    setup = {"perturbation_key": "perturbation", "control_group": "control"}
    return adata, setup, sorted(holdout), None


def _papalexi_task(data_path: str | None):
    """Papalexi 2021: held out STAT1 and IFNGR2 knockouts, embedded through GO + OmniPath."""
    from . import datasets
    from .benchmark import load_graph

    adata = datasets.papalexi2021(data_path)
    setup = {"perturbation_key": "perturbation", "control_group": "control"}
    graph, _ = load_graph("go,omnipath", data_dir=data_path)
    return adata, setup, ["IFNGR2", "STAT1"], graph


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix)


def run_demo(args: argparse.Namespace) -> Path:
    """Train, predict held-out perturbations, write AnnData, metrics and plots to ``args.out``."""
    import matplotlib

    matplotlib.use("Agg")

    from . import metrics, pl
    from ._model import PertTX

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.data == "simulated":
        adata, setup, holdout, graph = _simulated_task(args.seed)
    else:
        adata, setup, holdout, graph = _papalexi_task(args.data_path)
    print(f"data: {args.data}, {adata.n_obs} cells x {adata.n_vars} genes; held out: {holdout}")

    PertTX.setup_anndata(adata, **setup)
    model_kwargs = {"d_model": args.d_model, "n_layers": args.n_layers}
    if graph is not None and "gene_graph" in inspect.signature(PertTX.__init__).parameters:
        model_kwargs["gene_graph"] = graph
    elif graph is not None:
        raise SystemExit("this PertTX version has no gene-graph encoder; use --data simulated")
    model = PertTX(adata, **model_kwargs)
    print(model._model_summary_string)

    # Split-control: the model and the baselines see one half of the control cells; observed
    # effects are measured against the other half.
    fit_controls, _ = metrics.split_control(
        adata, setup["perturbation_key"], setup["control_group"], seed=args.seed
    )
    is_control = (adata.obs[setup["perturbation_key"]] == setup["control_group"]).to_numpy()
    model.train(
        max_epochs=args.epochs,
        holdout_perturbations=holdout,
        control_cells=np.flatnonzero(fit_controls | ~is_control),
        batch_size=args.batch_size,
        seed=args.seed,
    )

    adata.obsm["X_pertx"] = model.get_latent_representation()

    sources = adata[fit_controls]
    predictions = model.predict_perturbation(sources, holdout)
    predictions.write_h5ad(out / "predictions.h5ad")

    evaluation = model.evaluate(perturbations=holdout, gene_graph=graph)
    evaluation.to_csv(out / "metrics.csv", index=False)
    summary = metrics.summarize(evaluation)
    table = summary.pivot(index="metric", columns="method", values="mean")
    table.to_csv(out / "metrics_summary.csv")

    key = setup["perturbation_key"]
    held_cells = adata[adata.obs[key].isin(holdout)]
    observed_means = (
        pd.DataFrame(_dense(metrics.log_normalize(held_cells)), columns=adata.var_names)
        .groupby(held_cells.obs[key].astype(str).to_numpy())
        .mean()
    )
    control_mean = _dense(metrics.log_normalize(sources)).mean(0)
    predicted_means = (
        predictions.to_df().groupby(predictions.obs["perturbation"].astype(str).to_numpy()).mean()
    )

    pl.loss_curves(model.history, save=out / "loss_curves.png")
    pl.effect_scatter(
        predicted_means,
        observed_means,
        control_mean,
        perturbations=holdout,
        save=out / "predicted_vs_observed.png",
    )
    pl.umap(
        adata,
        color=setup["perturbation_key"],
        save=out / "umap_X_pertx.png",
        recompute=True,
        seed=args.seed,
    )

    adata.uns.pop("pertx_evaluation", None)
    adata.write_h5ad(out / "adata_pertx.h5ad")
    model.save(out / "model", overwrite=True, save_anndata=False)
    elapsed = time.time() - started
    with open(out / "run.json", "w") as handle:
        json.dump({"command": sys.argv, "seconds": round(elapsed, 1), "holdout": holdout}, handle)
    print(table.round(3).to_string())
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out} in {elapsed:.0f} s")
    return out


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=["simulated", "papalexi2021"], default="simulated")
    parser.add_argument(
        "--data-path",
        default=None,
        help="folder or file with the real data (default: $PERTX_DATA_DIR)",
    )
    parser.add_argument("--out", default="pertx_demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pertx`` command."""
    parser = argparse.ArgumentParser(prog="pertx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train, predict held-out perturbations, plot")
    _add_demo_arguments(demo)
    benchmark = commands.add_parser("benchmark", help="k-fold benchmark against baselines")
    from .benchmark import add_benchmark_arguments, run_benchmark

    add_benchmark_arguments(benchmark)
    from ._cli_model import COMMANDS, add_model_commands, quiet_lightning, run_model_command

    add_model_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    previous = install_sigterm_handler()
    try:
        if args.command in COMMANDS:
            run_model_command(args)  # quiet, input errors as one line
        else:
            with quiet_lightning():
                (run_demo if args.command == "demo" else run_benchmark)(args)
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM, or training stopped by either
        sigterm = _terminated.is_set()
        cause = "SIGTERM" if sigterm else "Ctrl-C"
        detail = ""
        if hasattr(error, "epochs_finished"):  # TrainingInterrupted
            detail = f" in training, after {error.epochs_finished} of {error.max_epochs} epochs"
        print(
            f"pertx {args.command}: interrupted by {cause}{detail}; "
            f"{_kept(args.command, Path(args.out))}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SIGTERM if sigterm else EXIT_CTRL_C
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
