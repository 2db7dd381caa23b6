"""``pertx benchmark``: the command-line options of :func:`~pertx_scvi.benchmark.benchmark`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..metrics import require_cell_eval
from ._run import BASELINE_NAMES, DEFAULTS, QUICK, benchmark
from ._sources import _split_names
from ._splits import SPLITS

__all__ = ["add_benchmark_arguments", "run_benchmark"]


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pertx benchmark`` options to ``parser`` (see :func:`benchmark`)."""
    d, q = DEFAULTS, QUICK
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="'simulated' (default), 'papalexi2021' (read from $PERTX_DATA_DIR) or a .h5ad file "
        "with raw counts",
    )
    data.add_argument("--perturbation-key", default=None, help="obs column (default perturbation)")
    data.add_argument("--control-group", default=None, help="control label (default control)")
    data.add_argument("--layer", default=None, help="layer with counts (default X)")
    splits = parser.add_argument_group("splits")
    splits.add_argument(
        "--folds", type=int, default=None, help=f"folds (default {d['folds']}; {q['folds']} quick)"
    )
    splits.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="kfold over labels, gears (unseen genes / combinations), auto: gears when the data "
        "has combinations",
    )
    splits.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    splits.add_argument(
        "--split-control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on half of the controls, take the observed effects against the other half",
    )
    graphs = parser.add_argument_group("graphs")
    graphs.add_argument(
        "--graph",
        default="auto",
        help="comma-separated names (go, omnipath, trrust, string from $PERTX_DATA_DIR/graphs; simulated) "
        "or paths; 'none' for no graph; auto (default): simulated network or go",
    )
    graphs.add_argument(
        "--linear-embedding",
        choices=("auto", "go", "pca"),
        default="auto",
        help="gene embedding of the linear baseline (auto: GO for real data)",
    )
    model = parser.add_argument_group("model and training")
    for flag, kind, name in (
        ("--d-model", int, "d_model"),
        ("--n-layers", int, "n_layers"),
        ("--n-heads", int, "n_heads"),
        ("--epochs", int, "epochs"),
        ("--batch-size", int, "batch_size"),
        ("--lr", float, "lr"),
    ):
        model.add_argument(
            flag, type=kind, default=None, help=f"default {d[name]} ({q[name]} with --quick)"
        )
    model.add_argument(
        "--validation-size", type=float, default=0.1, help="validation share (default 0.1)"
    )
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument(
        "--baselines",
        default=",".join(BASELINE_NAMES),
        help="comma-separated baselines (default: all)",
    )
    evaluation.add_argument("--n-top-de", type=int, default=20, help="top DE genes (default 20)")
    evaluation.add_argument(
        "--pertx-profile",
        choices=("expected", "sampled"),
        default="expected",
        help="PertTX profile: the expected log-normalised value of the predicted cells (default, "
        "as model.evaluate does), or the mean of log-normalised sampled counts",
    )
    evaluation.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further PertTX argument (repeatable; VALUE read as JSON, else as text), e.g. "
        "--model-option effect_retrieval=false --model-option gene_token_embedding=go",
    )
    evaluation.add_argument(
        "--shuffled-graph",
        action="store_true",
        help="also train PertTX on degree-preserving shuffled graphs (PertTX_shuffled_graph): "
        "does the graph's wiring help? Doubles the training time",
    )
    evaluation.add_argument(
        "--cell-eval",
        action="store_true",
        help="also score each fold with cell-eval (PertTX and the train-mean prediction, "
        "cell-eval's metrics and baseline-normalised score): cell_eval.csv, "
        "cell_eval_score.csv and a summary.md section. Needs pip install pertx-scvi[celleval]",
    )
    evaluation.add_argument(
        "--replicate",
        action="store_true",
        help="also score every method against half of each held-out perturbation's cells, "
        "with the other half as a prediction (split_half), and report the Virtual Cell "
        "Challenge score of PertTX: replicate_metrics.csv, vcc_score.csv, a summary.md section",
    )
    evaluation.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)"
    )
    evaluation.add_argument(
        "--out", default="pertx_benchmark", help="output folder (default pertx_benchmark)"
    )
    evaluation.add_argument(
        "--overwrite", action="store_true", help="recompute folds cached in --out/folds"
    )
    evaluation.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    evaluation.add_argument(
        "--data-dir",
        default=None,
        help="folder with perturb/ and graphs/ (default $PERTX_DATA_DIR)",
    )
    evaluation.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: half the cores, at least 1)",
    )
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small model on small simulated data, 2 folds (about a minute; for CI)",
    )


def _command_line(args: argparse.Namespace) -> str:
    """The command line: ``sys.argv`` when it ran ``pertx benchmark``, else rebuilt from ``args``."""
    argv = sys.argv[1:]
    if "benchmark" in argv:
        return shlex.join(["pertx", *argv])
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    words = ["pertx", "benchmark"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:
            words.append(flag)
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _model_options(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as keyword arguments (VALUE as JSON when it parses)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"pertx benchmark: --model-option {item!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run_benchmark(args: argparse.Namespace) -> Path:
    """Run :func:`benchmark` with the options parsed by :func:`add_benchmark_arguments`.

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    command = _command_line(args)
    if getattr(args, "cell_eval", False):
        try:
            require_cell_eval()
        except ImportError as error:
            raise SystemExit(f"pertx benchmark --cell-eval: {error}") from None
    return benchmark(
        args.data,
        out=args.out,
        perturbation_key=args.perturbation_key,
        control_group=args.control_group,
        layer=args.layer,
        folds=args.folds,
        split=args.split,
        seed=args.seed,
        graph=args.graph,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        validation_size=args.validation_size,
        split_control=args.split_control,
        baselines=_split_names(args.baselines),
        linear_embedding=args.linear_embedding,
        n_top_de=args.n_top_de,
        pertx_profile=args.pertx_profile,
        shuffled_graph=args.shuffled_graph,
        model_options=_model_options(args.model_option),
        cell_eval=args.cell_eval,
        replicate=args.replicate,
        n_boot=args.n_boot,
        data_dir=args.data_dir,
        threads=args.threads,
        quick=args.quick,
        overwrite=args.overwrite,
        plots=not args.no_plots,
        progress=not args.no_progress,
        command=command,
    )
