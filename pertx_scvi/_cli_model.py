"""``pertx train``, ``pertx predict`` and ``pertx screen``: the model API on the command line.

``pertx train`` registers an ``.h5ad`` of raw counts, trains :class:`~pertx_scvi.PertTX` and
saves it as a model folder (:meth:`~pertx_scvi.PertTX.save`). ``pertx predict`` and
``pertx screen`` need only that folder and the new cells: the model is loaded onto the source
cells (:meth:`~pertx_scvi.PertTX.load` with them as its AnnData), so the training data need not
travel with the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger("pertx_scvi")

__all__ = [
    "COMMANDS",
    "add_predict_arguments",
    "add_screen_arguments",
    "add_train_arguments",
    "add_model_commands",
    "quiet_lightning",
    "run_model_command",
    "run_predict",
    "run_screen",
    "run_train",
]

COMMANDS = ("train", "predict", "screen")
# Lightning's banners and tips; anndata's "storing 'x' as categorical" on writing.
_QUIET_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "anndata",
)


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line (no traceback)."""


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's tips, device banners and deprecation noise; keep errors and the
    package's own warnings.

    Lightning logs "GPU available", "💡 Tip: ..." and similar lines at INFO level on its own
    loggers, and third-party deprecations come as warnings; both are hidden while the context
    is active (the logger levels are restored after).
    """
    with contextlib.suppress(ImportError):  # creates Lightning's loggers (and their handlers)
        import lightning.pytorch  # noqa: F401
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r".*[Dd]eprecat")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(lightning|scvi)")
            warnings.filterwarnings("ignore", module=r"lightning")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


# ---- shared --------------------------------------------------------------------------------
def _names(spec: str | None) -> list[str]:
    """Comma-separated names; ``@file`` reads one name per line."""
    if spec is None:
        return []
    spec = spec.strip()
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        if not path.is_file():
            raise CommandError(f"{spec}: no such file")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [name.strip() for name in spec.split(",") if name.strip()]


def _read_h5ad(path: str, what: str = "--data"):
    import anndata as ad

    file = Path(path).expanduser()
    if not file.is_file():
        raise CommandError(f"{what} {path!r}: no such .h5ad file")
    try:
        return ad.read_h5ad(file)
    except Exception as exc:  # h5py / anndata raise several types for unreadable files
        raise CommandError(f"{what} {path!r} is not a readable .h5ad file ({exc})") from exc


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _setup_args(model_dir: str) -> dict[str, Any]:
    """The setup arguments saved in a model folder's registry (perturbation key, control...)."""
    from ._model_files import REGISTRY_JSON, ModelFileError, from_json

    path = Path(model_dir).expanduser() / REGISTRY_JSON
    if not path.is_file():
        if not Path(model_dir).expanduser().is_dir():
            raise CommandError(f"--model {model_dir!r}: no such folder")
        raise CommandError(f"--model {model_dir!r} holds no PertTX model ({REGISTRY_JSON} missing)")
    try:
        return dict(from_json(json.loads(path.read_text()))["setup_args"])
    except (ValueError, KeyError, TypeError, ModelFileError) as exc:
        raise CommandError(f"{path} is not a PertTX registry ({exc})") from exc


def _is_control(labels: pd.Series, setup: dict[str, Any]) -> np.ndarray:
    from ._labels import DEFAULT_CONTROL_TOKENS, parse_perturbation

    controls = (*DEFAULT_CONTROL_TOKENS, str(setup["control_group"]))
    values = labels.astype(str)
    empty = {
        v
        for v in pd.unique(values)
        if not parse_perturbation(v, setup["label_separator"], controls)
    }
    return values.isin(empty).to_numpy()


def _source_cells(adata, setup: dict[str, Any], group: str):
    """The source cells of ``adata``: ``auto`` (control cells when the perturbation column is
    there, else every cell), ``all``, or the cells of one label; a copy, and a description."""
    key = setup["perturbation_key"]
    if group == "all" or (group == "auto" and key not in adata.obs.columns):
        return adata.copy(), f"all {adata.n_obs} cells"
    if key not in adata.obs.columns:
        raise CommandError(
            f"--source-group {group!r} needs the perturbation column {key!r} in --data's obs "
            f"(columns: {list(adata.obs.columns)})"
        )
    if group == "auto":
        mask = _is_control(adata.obs[key], setup)
        what = f"control cells ({key} = {setup['control_group']!r})"
    else:
        mask = (adata.obs[key].astype(str) == group).to_numpy()
        what = f"cells of {key} = {group!r}"
    if not mask.any():
        shown = sorted(pd.unique(adata.obs[key].astype(str)))[:10]
        raise CommandError(
            f"--data has no {what} (labels include {shown}); choose the sources with "
            "--source-group LABEL or --source-group all"
        )
    return adata[mask].copy(), f"{int(mask.sum())} {what}"


def _load_model(model_dir: str, cells, setup: dict[str, Any]):
    """The saved model, set up on ``cells`` (a copy whose perturbation column says control,
    with zeros for missing phenotype columns: neither is used to predict)."""
    from ._model import PertTX

    carrier = cells.copy()
    carrier.obs[setup["perturbation_key"]] = str(setup["control_group"])
    for key, what in ((setup.get("cell_type_key"), "cell type"), (setup.get("batch_key"), "batch")):
        if key is not None and key not in carrier.obs.columns:
            raise CommandError(
                f"the model was trained with the {what} column {key!r}: --data needs "
                f"obs[{key!r}] (columns: {list(cells.obs.columns)})"
            )
    for key in setup.get("phenotype_keys") or []:
        if key not in carrier.obs.columns:
            carrier.obs[key] = 0.0
    return PertTX.load(model_dir, adata=carrier)


def _run(command: str, body) -> Any:
    """Run ``body()`` quietly; input errors become one-line messages (exit status 2)."""
    from ._model_files import ModelFileError

    try:
        with quiet_lightning():
            return body()
    except CommandError as exc:
        raise SystemExit(_error(command, str(exc))) from None
    except (KeyError, ValueError, FileNotFoundError, ModelFileError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise SystemExit(_error(command, str(message))) from None


def _error(command: str, message: str) -> int:
    import sys

    print(f"pertx {command}: error: {message}", file=sys.stderr, flush=True)
    return 2


# ---- pertx train ---------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pertx train`` (those of ``setup_anndata``, ``PertTX`` and ``train``)."""
    data = parser.add_argument_group("data (PertTX.setup_anndata)")
    data.add_argument("--data", required=True, help=".h5ad file with raw counts")
    data.add_argument("--out", required=True, help="model folder to write")
    data.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    data.add_argument("--perturbation-key", default="perturbation", help="obs column of labels")
    data.add_argument("--control-group", default="control", help="control label")
    data.add_argument("--layer", default=None, help="layer with counts (default X)")
    data.add_argument(
        "--is-log-normalized",
        action="store_true",
        help="the layer holds log1p(normalize_total) values, not counts (likelihood mse)",
    )
    data.add_argument("--cell-type-key", default=None, help="obs column of cell types")
    data.add_argument("--batch-key", default=None, help="obs column of batches")
    data.add_argument(
        "--phenotype-keys", default=None, help="comma-separated numeric obs columns of scores"
    )
    data.add_argument(
        "--save-anndata",
        action="store_true",
        help="also save the training AnnData in the folder (PertTX.load(folder) then needs none)",
    )
    model = parser.add_argument_group("model (PertTX)")
    model.add_argument(
        "--graph",
        default=None,
        help="gene graph(s), comma-separated: go, omnipath, trrust, string (from "
        "$PERTX_DATA_DIR/graphs) or graph files; one view each",
    )
    model.add_argument(
        "--id-table",
        default="auto",
        help="gene id table to match names with the graphs: auto (the data folder's "
        "human_gene_ids.tsv.gz with a named graph), none, or a file",
    )
    model.add_argument(
        "--data-dir", default=None, help="folder holding graphs/ (default $PERTX_DATA_DIR)"
    )
    model.add_argument("--d-model", type=int, default=64)
    model.add_argument("--n-layers", type=int, default=2)
    model.add_argument("--n-heads", type=int, default=4)
    model.add_argument(
        "--likelihood", default=None, help="nb, zinb or mse (default: the model's default)"
    )
    training = parser.add_argument_group("training (PertTX.train)")
    training.add_argument("--max-epochs", type=int, default=20)
    training.add_argument("--batch-size", type=int, default=64)
    training.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-2)")
    training.add_argument(
        "--holdout", default=None, help="comma-separated labels kept out of training"
    )
    training.add_argument("--validation-size", type=float, default=0.1)
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    training.add_argument("--no-progress", action="store_true", help="no progress bar")


def _graph_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from . import datasets
    from .benchmark import load_graphs
    from .benchmark._sources import GRAPH_FILES, ID_TABLE_FILE

    graphs, names = load_graphs(args.graph, None, args.data_dir)
    if not graphs:
        return {}
    kwargs: dict[str, Any] = {"gene_graph": graphs[0] if len(graphs) == 1 else graphs}
    choice = str(args.id_table).strip()
    if choice.lower() == "auto":
        if any(name in GRAPH_FILES for name in names):
            with contextlib.suppress(FileNotFoundError):
                kwargs["id_table"] = str(datasets.find_data_file(ID_TABLE_FILE, args.data_dir))
    elif choice.lower() != "none":
        if not Path(choice).expanduser().is_file():
            raise CommandError(f"--id-table {choice!r}: no such file")
        kwargs["id_table"] = choice
    print(
        f"gene graph(s): {', '.join(names)}"
        + (" (with an id table)" if "id_table" in kwargs else "")
    )
    return kwargs


def run_train(args: argparse.Namespace) -> Path:
    """``pertx train``: set up ``--data``, train, save the model folder ``--out``."""
    return _run("train", lambda: _train(args))


def _train(args: argparse.Namespace) -> Path:
    from ._model import PertTX

    started = time.perf_counter()
    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"--out {args.out!r} exists and is not empty: pass --overwrite")
    _set_threads(args.threads)
    adata = _read_h5ad(args.data)
    print(f"data: {args.data}, {adata.n_obs} cells x {adata.n_vars} genes")
    setup = {
        "perturbation_key": args.perturbation_key,
        "control_group": args.control_group,
        "layer": args.layer,
        "cell_type_key": args.cell_type_key,
        "batch_key": args.batch_key,
        "phenotype_keys": _names(args.phenotype_keys) or None,
    }
    if args.is_log_normalized:  # only when asked: older setups have no such argument
        setup["is_log_normalized"] = True
    PertTX.setup_anndata(adata, **setup)
    model_kwargs: dict[str, Any] = {
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
    }
    if args.likelihood is not None:
        model_kwargs["likelihood"] = args.likelihood
    model_kwargs.update(_graph_kwargs(args))
    model = PertTX(adata, **model_kwargs)
    print(model._model_summary_string)
    train_kwargs: dict[str, Any] = {
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "holdout_perturbations": _names(args.holdout) or None,
        "validation_size": args.validation_size,
        "seed": args.seed,
        "enable_progress_bar": not args.no_progress,
    }
    if args.lr is not None:
        train_kwargs["lr"] = args.lr
    import torch

    torch.manual_seed(args.seed)
    model.train(**train_kwargs)
    history = getattr(model, "history", None) or {}
    losses = [
        f"{name} {float(frame.iloc[-1, 0]):.4g}"
        for name, frame in history.items()
        if name in ("train_loss", "validation_loss") and len(frame)
    ]
    model.save(out, overwrite=args.overwrite, save_anndata=args.save_anndata)
    seconds = time.perf_counter() - started
    print(
        f"trained {args.max_epochs} epochs"
        + (f" ({', '.join(losses)})" if losses else "")
        + f"; model saved to {out} in {seconds:.0f} s"
    )
    return out


# ---- pertx predict -------------------------------------------------------------------------
def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by pertx train")
    parser.add_argument(
        "--data", required=True, help=".h5ad with the source cells (raw counts, training genes)"
    )
    parser.add_argument(
        "--source-group",
        default="auto",
        help="source cells of --data: auto (its control cells when it has the perturbation "
        "column, else all cells), all, or one label of the perturbation column",
    )


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pertx predict`` (those of ``PertTX.predict_perturbation``)."""
    _add_source_arguments(parser)
    parser.add_argument(
        "--perturbations",
        required=True,
        help="labels to predict, comma-separated (A,B+C) or @file with one per line",
    )
    parser.add_argument("--out", required=True, help=".h5ad file to write")
    parser.add_argument("--n-samples", type=int, default=1, help="count draws per source cell")
    parser.add_argument("--n-draws", type=int, default=16, help="Monte Carlo draws behind X")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_predict(args: argparse.Namespace) -> Path:
    """``pertx predict``: predict ``--perturbations`` from the source cells, write ``--out``."""
    return _run("predict", lambda: _predict(args))


def _predict(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    _set_threads(args.threads)
    perturbations = _names(args.perturbations)
    if not perturbations:
        raise CommandError("--perturbations names no label (e.g. --perturbations A,B+C)")
    setup = _setup_args(args.model)
    data = _read_h5ad(args.data)
    sources, what = _source_cells(data, setup, args.source_group)
    print(f"sources: {what} of {args.data}")
    model = _load_model(args.model, sources, setup)
    prediction = model.predict_perturbation(
        sources,
        perturbations,
        n_samples=args.n_samples,
        n_draws=args.n_draws,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    prediction.write_h5ad(out)
    print(
        f"wrote {prediction.n_obs} predicted cells ({len(perturbations)} perturbation(s) x "
        f"{sources.n_obs} sources x {args.n_samples} sample(s)) x {prediction.n_vars} genes to "
        f"{out} in {time.perf_counter() - started:.0f} s"
    )
    return out


# ---- pertx screen --------------------------------------------------------------------------
def add_screen_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pertx screen`` (those of ``PertTX.virtual_screen``)."""
    _add_source_arguments(parser)
    parser.add_argument(
        "--target",
        default=None,
        help="target state: an .h5ad of target cells, or a label of --target-key in --data",
    )
    parser.add_argument(
        "--target-key", default=None, help="obs column of --target (default: perturbation column)"
    )
    parser.add_argument(
        "--phenotype", default=None, help="phenotype key of the model to rank by (or report)"
    )
    parser.add_argument(
        "--minimize", action="store_true", help="rank the largest phenotype decrease first"
    )
    parser.add_argument(
        "--candidates",
        default=None,
        help="labels to rank, comma-separated or @file (default: every gene the model embeds)",
    )
    parser.add_argument("--max-order", type=int, choices=(1, 2), default=1, help="2: also pairs")
    parser.add_argument(
        "--max-pairs", type=int, default=20_000, help="most pairs (of the best singles)"
    )
    parser.add_argument(
        "--score",
        choices=("auto", "distance", "cosine", "phenotype"),
        default="auto",
        help="ranking score (auto: distance with a target, else phenotype)",
    )
    parser.add_argument(
        "--profile",
        choices=("expected", "mean"),
        default="expected",
        help="expected: Monte Carlo E[log1p(CP10k)]; mean: log1p of the mean, faster",
    )
    parser.add_argument("--max-cells", type=int, default=128, help="source cells used (0: all)")
    parser.add_argument("--n-draws", type=int, default=2, help="Monte Carlo draws per cell")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (score_se)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--top", type=int, default=10, help="rows printed (and plotted)")
    parser.add_argument("--plot", default=None, help="also draw the top candidates to this image")
    parser.add_argument("--out", required=True, help=".csv file of the ranking")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_screen(args: argparse.Namespace) -> Path:
    """``pertx screen``: rank candidate perturbations, write the ranking to ``--out``."""
    return _run("screen", lambda: _screen(args))


def _screen(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    _set_threads(args.threads)
    if args.target is None and args.phenotype is None:
        raise CommandError("pass --target (cells or a label) and/or --phenotype")
    setup = _setup_args(args.model)
    data = _read_h5ad(args.data)
    sources, what = _source_cells(data, setup, args.source_group)
    print(f"sources: {what} of {args.data}")
    target = None
    if args.target is not None:
        if args.target.endswith(".h5ad") or Path(args.target).expanduser().is_file():
            target = _read_h5ad(args.target, "--target")
            print(f"target: {target.n_obs} cells of {args.target}")
        else:
            key = args.target_key or setup["perturbation_key"]
            if key not in data.obs.columns:
                raise CommandError(
                    f"--target {args.target!r} is no file, and --data has no column {key!r} to "
                    f"find it in (columns: {list(data.obs.columns)})"
                )
            values = data.obs[key].astype(str)
            if key == setup["perturbation_key"]:
                from ._labels import DEFAULT_CONTROL_TOKENS, parse_perturbation

                controls = (*DEFAULT_CONTROL_TOKENS, str(setup["control_group"]))
                separator = setup["label_separator"]
                wanted = parse_perturbation(args.target, separator, controls)
                same = {
                    v
                    for v in pd.unique(values)
                    if parse_perturbation(v, separator, controls) == wanted
                }
                mask = values.isin(same).to_numpy()
            else:
                mask = (values == args.target).to_numpy()
            if not mask.any():
                shown = sorted(pd.unique(values))[:10]
                raise CommandError(
                    f"--target {args.target!r}: no such file, and no cells of that label in "
                    f"--data's obs[{key!r}] (labels include {shown})"
                )
            target = data[mask].copy()
            print(f"target: {target.n_obs} cells of {key} = {args.target!r}")
    model = _load_model(args.model, sources, setup)
    candidates = _names(args.candidates) or None
    ranking = model.virtual_screen(
        sources,
        target,
        candidates,
        max_order=args.max_order,
        phenotype=args.phenotype,
        maximize=not args.minimize,
        score=args.score,
        max_pairs=args.max_pairs,
        profile=args.profile,
        max_cells=args.max_cells or None,
        n_draws=args.n_draws,
        n_boot=args.n_boot,
        seed=args.seed,
        progress_bar=not args.no_progress,
    )
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    ranking.to_csv(out, index=False)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .pl import virtual_screen as plot_screen

        plot_screen(ranking, top=max(args.top, 1), save=args.plot)
        plt.close("all")
    attrs = ranking.attrs
    with pd.option_context("display.width", 120, "display.max_columns", 12):
        print(ranking.head(args.top).round(4).to_string(index=False))
    print(
        f"ranked {len(ranking)} candidates by {attrs['score']} "
        f"({attrs['candidates_per_second']:.0f} per second); wrote {out}"
        + (f" and {args.plot}" if args.plot else "")
        + f" in {time.perf_counter() - started:.0f} s"
    )
    return out


def add_model_commands(commands: Any) -> None:
    """Add ``train``, ``predict`` and ``screen`` to the ``pertx`` sub-command parsers."""
    add_train_arguments(commands.add_parser("train", help="train PertTX on an .h5ad, save it"))
    add_predict_arguments(
        commands.add_parser("predict", help="predict perturbations of cells with a saved model")
    )
    add_screen_arguments(
        commands.add_parser("screen", help="rank candidate perturbations towards a target")
    )


def run_model_command(args: argparse.Namespace) -> Path:
    """Run the ``train``, ``predict`` or ``screen`` command of ``args.command``."""
    runners = {"train": run_train, "predict": run_predict, "screen": run_screen}
    return runners[args.command](args)
