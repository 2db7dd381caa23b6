"""``benchmark()``: settings, the fold loop with its cache, and the written results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from .. import metrics
from .._labels import DEFAULT_CONTROL_TOKENS, DEFAULT_SEPARATOR, parse_perturbation
from ._fold import _run_fold, pool_discrimination, replicate_from_profiles
from ._report import _paired, _plot_all, _summaries, _write_summary_md, headline_metrics
from ._sources import (
    ID_TABLE_FILE,
    _find,
    _linear_embedding,
    _load_data,
    _resolve_graph_spec,
    load_graphs,
)
from ._splits import SPLITS, _perturbation_labels, gears_splits, kfold_perturbations

__all__ = ["BASELINE_NAMES", "DEFAULTS", "QUICK", "benchmark"]

BASELINE_NAMES = metrics.BASELINE_NAMES

DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "epochs": 2,
    "batch_size": 64,
    "lr": 1e-2,
}
"""Settings at the default size. Papalexi 2021 (20,729 cells) 5-fold with GO + OmniPath trains
on about 15,000 cells per fold: at 40-50 cells/s (one torch thread on a shared 2-core machine)
two epochs per fold keep the run under an hour."""

QUICK: dict[str, Any] = {
    "folds": 2,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-2,
}
"""Settings of ``--quick`` (a small model on small simulated data; CI)."""


def _resolve(value: Any, name: str, quick: bool) -> Any:
    if value is not None:
        return value
    return (QUICK if quick else DEFAULTS)[name]


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """``PertTX`` keyword arguments of ``model_options``: plain values only (they are hashed
    into the run's configuration and written to ``config.json``), or dicts of them such as
    ``graph_kwargs={"free_dim": 0}``."""
    plain = (str, int, float, bool, type(None))

    def is_plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and isinstance(v, plain) for k, v in value.items())
        return isinstance(value, plain)

    bad = {k: type(v).__name__ for k, v in options.items() if not is_plain(v)}
    if bad:
        raise TypeError(
            f"model_options takes plain values (str, number, bool, None) or dicts of them, got "
            f"{bad}; pass tables and graphs by name or file path"
        )
    reserved = {"d_model", "n_layers", "n_heads", "gene_graph", "id_table"} & set(options)
    if reserved:
        raise ValueError(f"model_options {sorted(reserved)} have options of their own")
    return dict(sorted(options.items()))


def _config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_cache(folds_dir: Path, digest: str) -> None:
    """Refuse a folder whose cached folds were computed with other settings."""
    for info_path in sorted(folds_dir.glob("fold_*.json")):
        try:
            cached = json.loads(info_path.read_text()).get("hash")
        except (OSError, json.JSONDecodeError):
            cached = None
        if cached != digest:
            raise ValueError(
                f"{info_path.parent} holds fold results of other settings ({info_path.name}: "
                f"config hash {cached} != {digest}); use another --out, or --overwrite to "
                "recompute"
            )


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def benchmark(
    data: str | os.PathLike | AnnData | None = None,
    *,
    out: str | os.PathLike = "pertx_benchmark",
    perturbation_key: str | None = None,
    control_group: str | None = None,
    layer: str | None = None,
    folds: int | None = None,
    split: str = "auto",
    seed: int = 0,
    graph: Any = "auto",
    d_model: int | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    validation_size: float = 0.1,
    split_control: bool = True,
    baselines: Sequence[str] = BASELINE_NAMES,
    linear_embedding: str = "auto",
    n_top_de: int = 20,
    pertx_profile: str = "expected",
    shuffled_graph: bool = False,
    model_options: dict[str, Any] | None = None,
    cell_eval: bool = False,
    replicate: bool = False,
    n_boot: int = 1000,
    data_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    quick: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Benchmark PertTX against the baselines on held-out perturbations, fold by fold.

    Parameters
    ----------
    data
        ``"simulated"`` (:func:`pertx_scvi.datasets.simulate`; the default), ``"papalexi2021"``
        (:func:`pertx_scvi.datasets.papalexi2021`, read from ``$PERTX_DATA_DIR``), a path to an
        ``.h5ad`` file with raw counts, or an :class:`~anndata.AnnData`.
    out
        Output folder: ``metrics.csv``, ``summary.csv``, ``summary.md``, ``config.json``,
        ``folds/`` (per-fold cache) and ``plots/``.
    perturbation_key, control_group, layer
        For an ``.h5ad`` file or AnnData: label column (default ``"perturbation"``), control
        label (default ``"control"``) and counts layer (default ``X``).
    folds
        Number of folds (default 5; 2 with ``quick``).
    split
        ``"kfold"`` (:func:`kfold_perturbations`), ``"gears"`` (:func:`gears_splits`) or
        ``"auto"`` (``gears`` when the data has combination labels, else ``kfold``).
    seed
        Seed of the splits, the control split, training and the bootstrap.
    graph
        Gene graph (see :func:`load_graph`): names (``go``, ``omnipath``, ``trrust``,
        ``simulated``), paths, a :class:`~pertx_scvi.GeneGraph`, ``None``; ``"auto"`` (default):
        the simulator's network for simulated data, else ``go`` when the file is found. Used by
        the graph-neighbour baseline (their union) and passed to PertTX as ``gene_graph=`` (one
        view per graph).
    d_model, n_layers, n_heads
        PertTX size (default 64, 2, 4; 32, 1, 2 with ``quick``).
    epochs, batch_size, lr
        Training (default 2, 64, 1e-2; 20, 64, 1e-2 with ``quick``).
    validation_size
        Share of the training cells used for the validation loss.
    split_control
        Split the control cells in halves (:func:`pertx_scvi.metrics.split_control`): training
        and the baselines use one half, the observed Δ is taken against the other.
    baselines
        Baselines to compare with (``control_mean``, ``train_mean``, ``additive``, ``linear``,
        ``graph_neighbour``; the last one needs a graph).
    linear_embedding
        Gene embedding of the linear baseline: ``"go"`` (:func:`pertx_scvi.metrics.go_gene_embedding`
        of ``graphs/human_gene2go.tsv.gz``), ``"pca"`` (its PCA default) or ``"auto"`` (``go``
        for real data when the file is found).
    n_top_de
        Top DE genes of the ``*_top`` metrics.
    pertx_profile
        PertTX's predicted profile of a perturbation from its predictions for the fitting
        controls (:meth:`pertx_scvi.PertTX.predict_profiles`): ``"expected"`` (default; the
        mean of ``predict_perturbation(...).X``, the expected log-normalised value, as
        :meth:`~pertx_scvi.PertTX.evaluate` does) or ``"sampled"`` (counts drawn from the
        model, log-normalised per cell and averaged; the same quantity with sampling noise).
    shuffled_graph
        Also train, per fold, the same model given a degree-preserving shuffled copy of every
        graph (:meth:`GeneGraph.shuffled <pertx_scvi.GeneGraph.shuffled>`), reported as
        ``PertTX_shuffled_graph``: whether the graph's wiring, not merely its presence, is what
        helps. Doubles the training time.
    model_options
        Further :class:`~pertx_scvi.PertTX` keyword arguments with plain values, e.g.
        ``{"effect_retrieval": False}`` or ``{"gene_token_embedding": "go"}`` (ablations);
        part of the run's configuration hash.
    cell_eval
        Also score each fold with cell-eval (the optional extra: ``pip install
        pertx-scvi[celleval]``; checked before anything is trained): PertTX's predicted cells
        and the train-mean prediction against the held-out cells
        (:func:`pertx_scvi.metrics.score_with_cell_eval`), with cell-eval's baseline-normalised
        score of PertTX against train mean. Writes ``cell_eval.csv`` (per perturbation),
        ``cell_eval_score.csv`` (per fold) and a section of ``summary.md``. Not part of the
        settings' hash: a cached fold without cell-eval results is recomputed.
    replicate
        Also score every method against half of each held-out perturbation's cells, beside
        the other half as a prediction (``split_half``: the experiment repeated;
        :class:`pertx_scvi.metrics.SplitHalfCeiling`), and report the Virtual Cell Challenge
        score of PertTX per headline metric (:func:`pertx_scvi.metrics.vcc_scores`: 0 no
        better than the strongest baseline, 1 as good as the replicate). Writes
        ``replicate_metrics.csv``, ``vcc_score.csv`` and a section of ``summary.md``; like
        ``cell_eval`` not part of the settings' hash.
    n_boot
        Bootstrap resamples of the intervals.
    data_dir
        Folder with ``perturb/`` and ``graphs/`` (default ``$PERTX_DATA_DIR``, then the cache
        folder; see :func:`pertx_scvi.datasets.find_data_file`).
    threads
        Torch CPU threads (default: half the CPU cores, at least 1). On a machine whose few
        cores are shared, more threads than free cores slow training down many times over.
    quick
        Small model on small simulated data (a couple of minutes on 2 CPU cores; for CI).
        Explicit arguments still win.
    overwrite
        Recompute finished folds even when their cached results match the settings (otherwise
        a folder with results of other settings is an error).
    plots
        Write the PNG plots.
    progress
        Show progress bars (rich) over folds and epochs.
    command
        Command line written at the top of ``summary.md`` (default: this call).

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    wall_start = time.perf_counter()
    if cell_eval:
        metrics.require_cell_eval()  # before anything is loaded or trained
    import torch
    from rich.console import Console

    from .._model import PertTX
    from ..graphs import GeneGraph

    console = Console(stderr=True, quiet=not progress)
    out = Path(out).expanduser()
    if data is None:
        data = "simulated"
    n_threads = int(threads) if threads else max(1, (os.cpu_count() or 2) // 2)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        settings: dict[str, Any] = {
            "folds": int(_resolve(folds, "folds", quick)),
            "d_model": int(_resolve(d_model, "d_model", quick)),
            "n_layers": int(_resolve(n_layers, "n_layers", quick)),
            "n_heads": int(_resolve(n_heads, "n_heads", quick)),
            "epochs": int(_resolve(epochs, "epochs", quick)),
            "batch_size": int(_resolve(batch_size, "batch_size", quick)),
            "lr": float(_resolve(lr, "lr", quick)),
            "validation_size": float(validation_size),
            "seed": int(seed),
            "split_control": bool(split_control),
            "baselines": [str(b) for b in baselines],
            "n_top_de": int(n_top_de),
            "pertx_profile": str(pertx_profile),
            "shuffled_graph": bool(shuffled_graph),
        }
        if model_options:  # only when given, so that earlier runs keep their config hash
            settings["model_options"] = _plain_options(model_options)
        unknown = [b for b in settings["baselines"] if b not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if pertx_profile not in ("expected", "sampled"):
            raise ValueError(
                f"pertx_profile must be 'expected' or 'sampled', got {pertx_profile!r}"
            )

        console.log(f"loading data: {data if not isinstance(data, AnnData) else 'AnnData'}")
        loaded = _load_data(data, perturbation_key, control_group, layer, quick, seed, data_dir)
        adata, key, control = loaded.adata, loaded.perturbation_key, loaded.control_group
        # Files of log-normalised values only carry scanpy's marker (GEARS, PerturBench).
        log_normalized = loaded.layer is None and metrics.is_log_normalized(adata)
        if log_normalized:
            console.log("data: log-normalised values (uns['log1p']); likelihood 'mse'")
        PertTX.setup_anndata(
            adata,
            perturbation_key=key,
            control_group=control,
            layer=loaded.layer,
            is_log_normalized=log_normalized,
        )
        separator = DEFAULT_SEPARATOR
        tokens = (*DEFAULT_CONTROL_TOKENS, control)
        labels = adata.obs[key].astype(str).to_numpy()
        distinct = _perturbation_labels(pd.unique(labels), tokens, separator)
        has_combinations = any(len(parse_perturbation(p, separator, tokens)) > 1 for p in distinct)
        split_kind = ("gears" if has_combinations else "kfold") if split == "auto" else split
        splitter = gears_splits if split_kind == "gears" else kfold_perturbations
        fold_labels = splitter(
            distinct,
            settings["folds"],
            settings["seed"],
            control_group=control,
            separator=separator,
        )

        graph_spec = _resolve_graph_spec(graph, loaded, data_dir)
        console.log(f"loading graph: {graph_spec}")
        graph_parts, graph_names = load_graphs(graph_spec, loaded.network, data_dir)
        gene_graph = None
        if graph_parts:
            gene_graph = graph_parts[0] if len(graph_parts) == 1 else GeneGraph.union(*graph_parts)
        # PertTX gets one view per graph (multi-view encoder); the baseline the union.
        model_graph = graph_parts[0] if len(graph_parts) == 1 else (graph_parts or None)
        shuffled_model_graph = None
        if settings["shuffled_graph"]:
            if model_graph is None:
                raise ValueError(
                    "shuffled_graph needs a gene graph to shuffle: pass graph= (--graph)"
                )
            # Rewired once (seeded), shared by every fold like the real graphs.
            shuffled = [g.shuffled(seed=settings["seed"]) for g in graph_parts]
            shuffled_model_graph = shuffled[0] if len(shuffled) == 1 else shuffled
        perturbation_genes = sorted({g for p in distinct for g in parse_perturbation(p, separator)})
        embedding, embedding_name = _linear_embedding(
            linear_embedding, loaded, perturbation_genes, data_dir
        )
        id_table = None
        if loaded.is_real and gene_graph is not None:
            try:
                id_table = _find(ID_TABLE_FILE, data_dir)
            except FileNotFoundError:
                id_table = None

        # Graph-neighbour baselines over the union and, with several graphs, over each graph
        # alone (named "<baseline>:<graph>"): every prior source PertTX uses has its own bar.
        baseline_edges = None
        if gene_graph is not None and len(graph_parts) > 1:
            baseline_edges = {"all": gene_graph.edges}
            baseline_edges.update(
                {str(n): g.edges for n, g in zip(graph_names, graph_parts, strict=True)}
            )
        controls = metrics.control_masks(
            adata, key, control, split=settings["split_control"], seed=settings["seed"]
        )
        fit_mask = controls[0] if settings["split_control"] else None

        config = {
            "data": loaded.name,
            "data_shape": [int(adata.n_obs), int(adata.n_vars)],
            "perturbation_key": key,
            "control_group": control,
            "layer": loaded.layer,
            "split": split_kind,
            "graph": graph_names,
            "graph_edges": None if gene_graph is None else int(gene_graph.n_edges),
            "linear_embedding": embedding_name,
            "model_gene_graph": gene_graph is not None,
            "baseline_graphs": None if baseline_edges is None else sorted(baseline_edges),
            **settings,
        }
        digest = _config_hash(config)
        folds_dir = out / "folds"
        if not overwrite:
            _check_cache(folds_dir, digest)
        folds_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(
            json.dumps({**config, "hash": digest, "cell_eval": bool(cell_eval)}, indent=2) + "\n"
        )

        results, profile_frames, delta_frames, histories, infos = [], [], [], {}, []
        cell_eval_frames: list[pd.DataFrame] = []
        cell_eval_scores: list[pd.DataFrame] = []
        replicate_frames: list[tuple[pd.DataFrame, pd.DataFrame]] = []
        n_cached = 0
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=not progress) as bars:
            fold_task = bars.add_task("folds", total=len(fold_labels))
            epoch_task = bars.add_task("epochs", total=settings["epochs"], visible=False)
            for k, held in enumerate(fold_labels):
                csv_path = folds_dir / f"fold_{k}.csv"
                info_path = folds_dir / f"fold_{k}.json"
                profiles_path = folds_dir / f"fold_{k}_profiles.csv.gz"
                history_path = folds_dir / f"fold_{k}_history.csv"
                deltas_path = folds_dir / f"fold_{k}_deltas.csv.gz"
                cell_eval_path = folds_dir / f"fold_{k}_cell_eval.csv.gz"
                cell_eval_score_path = folds_dir / f"fold_{k}_cell_eval_score.csv"
                replicate_paths = (
                    folds_dir / f"fold_{k}_replicate.csv",
                    folds_dir / f"fold_{k}_replicate_deltas.csv.gz",
                )
                cached = csv_path.exists() and info_path.exists() and deltas_path.exists()
                if cell_eval:
                    cached = cached and cell_eval_path.exists() and cell_eval_score_path.exists()
                if replicate:  # without the replicate files: from the stored profiles
                    cached = cached and profiles_path.exists()
                if cached and not overwrite:
                    info = json.loads(info_path.read_text())
                    results.append(pd.read_csv(csv_path))
                    delta_frames.append(pd.read_csv(deltas_path))
                    if profiles_path.exists():
                        profile_frames.append(pd.read_csv(profiles_path))
                    if history_path.exists():
                        histories[k] = pd.read_csv(history_path, index_col="epoch")
                    if cell_eval:
                        cell_eval_frames.append(pd.read_csv(cell_eval_path))
                        cell_eval_scores.append(pd.read_csv(cell_eval_score_path))
                    if replicate and not all(p.exists() for p in replicate_paths):
                        # Trained before without --replicate: score its stored predictions.
                        result_k, deltas_k = replicate_from_profiles(
                            k, held, loaded, settings, gene_graph, embedding, controls,
                            baseline_edges, profile_frames[-1], separator,
                        )  # fmt: skip
                        _write_replicate(replicate_paths, result_k, _fold_frame(deltas_k, k))
                    if replicate:
                        replicate_frames.append(tuple(map(pd.read_csv, replicate_paths)))
                    infos.append(info)
                    n_cached += 1
                    console.log(f"fold {k}: cached ({csv_path}), skipped")
                    bars.advance(fold_task)
                    continue
                bars.reset(epoch_task, total=settings["epochs"], visible=True)
                bars.update(epoch_task, description=f"fold {k} epochs")

                fold_start = time.perf_counter()

                def update_epoch(epoch: int, _task=epoch_task, _k=k, _t0=fold_start) -> None:
                    bars.update(_task, completed=epoch)
                    if not console.is_terminal:  # no live bars in a log file: one line per epoch
                        console.log(
                            f"fold {_k}: epoch {epoch}/{settings['epochs']} "
                            f"({time.perf_counter() - _t0:.0f} s)"
                        )

                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
                    result, profiles, deltas, history, info, cell_eval_tables, replicated = (
                        _run_fold(
                            k,
                            held,
                            loaded,
                            settings,
                            gene_graph,
                            embedding,
                            controls,
                            update_epoch,
                            id_table,
                            model_graph,
                            baseline_edges,
                            cell_eval=cell_eval,
                            replicate=replicate,
                        )
                    )
                    if shuffled_model_graph is not None:
                        bars.reset(epoch_task, total=settings["epochs"])
                        bars.update(epoch_task, description=f"fold {k} epochs (shuffled graph)")
                        shuffled_result, _, shuffled_deltas, _, shuffled_info, *_ = _run_fold(
                            k,
                            held,
                            loaded,
                            {**settings, "baselines": []},
                            gene_graph,
                            embedding,
                            controls,
                            update_epoch,
                            id_table,
                            shuffled_model_graph,
                        )
                        shuffled_result = shuffled_result[shuffled_result["method"] == "PertTX"]
                        shuffled_result = shuffled_result.assign(method="PertTX_shuffled_graph")
                        result = pd.concat([result, shuffled_result], ignore_index=True)
                        shuffled_deltas = shuffled_deltas[
                            shuffled_deltas.index.str.startswith("PertTX|")
                        ]
                        shuffled_deltas.index = (
                            "PertTX_shuffled_graph" + shuffled_deltas.index.str[6:]
                        )
                        deltas = pd.concat([deltas, shuffled_deltas])
                        info["train_seconds_shuffled_graph"] = shuffled_info["train_seconds"]
                info["hash"] = digest
                profiles = profiles.rename_axis("row").reset_index()
                profiles.insert(0, "fold", k)
                deltas = _fold_frame(deltas, k)
                _write_atomic(
                    deltas_path,
                    lambda p, f=deltas: f.to_csv(p, index=False, compression="gzip"),
                )
                _write_atomic(history_path, lambda p, h=history: h.to_csv(p))
                _write_atomic(
                    profiles_path,
                    lambda p, f=profiles: f.to_csv(p, index=False, compression="gzip"),
                )
                if cell_eval:
                    per_label, fold_score = _cell_eval_frames(k, cell_eval_tables, info)
                    _write_atomic(
                        cell_eval_path,
                        lambda p, f=per_label: f.to_csv(p, index=False, compression="gzip"),
                    )
                    _write_atomic(
                        cell_eval_score_path, lambda p, f=fold_score: f.to_csv(p, index=False)
                    )
                    cell_eval_frames.append(per_label)
                    cell_eval_scores.append(fold_score)
                if replicated is not None:
                    replicated = (replicated[0], _fold_frame(replicated[1], k))
                    _write_replicate(replicate_paths, *replicated)
                    replicate_frames.append(replicated)
                info_path.write_text(json.dumps(info, indent=2) + "\n")
                _write_atomic(csv_path, lambda p, r=result: r.to_csv(p, index=False))
                results.append(result)
                profile_frames.append(profiles)
                delta_frames.append(deltas)
                histories[k] = history
                infos.append(info)
                pertx = result[
                    (result["method"] == "PertTX") & (result["metric"] == "pearson_delta")
                ]
                console.log(
                    f"fold {k}: {len(held)} held out, trained {info['train_seconds']} s, "
                    f"PertTX pearson_delta {pertx['value'].mean():.3f}"
                )
                bars.advance(fold_task)
            bars.update(epoch_task, visible=False)

        df = pd.concat(results, ignore_index=True)
        df = pool_discrimination(df, pd.concat(delta_frames, ignore_index=True), separator, control)
        df.to_csv(out / "metrics.csv", index=False)
        paired = _paired(df, settings["n_top_de"], n_boot=int(n_boot), seed=settings["seed"])
        paired.to_csv(out / "paired.csv", index=False)
        summary = _summaries(df, n_boot=int(n_boot), seed=settings["seed"])
        summary.to_csv(out / "summary.csv", index=False)
        metric_order = metrics.metric_names(settings["n_top_de"])
        metric_order.insert(metric_order.index("discrimination") + 1, "discrimination_fold")
        wall = time.perf_counter() - wall_start

        notes = list(loaded.notes)
        missing = sorted({p for info in infos for p in info.get("pertx_missing", [])})
        if missing:
            notes.append(
                f"PertTX could not embed {len(missing)} held-out label(s) ({', '.join(missing[:20])}"
                f"{' ...' if len(missing) > 20 else ''}): their PertTX rows are NaN, so PertTX's "
                "means cover fewer perturbations than the baselines' (see n), and its "
                "discrimination is left out in those folds"
            )
        if split_kind == "gears":
            notes.append(
                "GEARS folds hold a combination out in every fold where one of its genes is unseen, "
                "so a combination can appear in several folds (with different training sets)"
            )
        n_labels = len(distinct)
        n_controls = int((labels == control).sum())
        header = {
            "command": command or _python_call(data, out, quick),
            "wall time": f"{wall / 60:.1f} min ({wall:.0f} s; {len(infos) - n_cached} fold(s) "
            f"trained, {n_cached} from the cache in {out / 'folds'})",
            "data": f"{loaded.name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {n_labels} "
            f"perturbation labels, {n_controls:,} control cells (`{control}`)",
            "splits": f"{split_kind}, {settings['folds']} folds over perturbations, seed "
            f"{settings['seed']}",
            "controls": (
                f"split-control: half of the controls ({int(fit_mask.sum()):,}) for training and the "
                "baselines, the other half as the reference of the observed Δ"
                if fit_mask is not None
                else "all controls for training, baselines and the observed Δ (no split-control)"
            ),
            "graph": (
                "none"
                if gene_graph is None
                else f"{', '.join(map(str, graph_names))} ({gene_graph.n_genes:,} genes, "
                f"{gene_graph.n_edges:,} edges); PertTX gene_graph: "
                f"yes ({len(graph_parts)} view(s))"
            ),
            "model": f"PertTX d_model={settings['d_model']}, n_layers={settings['n_layers']}, "
            f"n_heads={settings['n_heads']}"
            + "".join(f", {k}={v!r}" for k, v in settings.get("model_options", {}).items()),
            "training": f"{settings['epochs']} epochs, batch size {settings['batch_size']}, "
            f"lr {settings['lr']:g}, validation share {settings['validation_size']:g}, "
            f"{n_threads} torch thread(s)",
            "baselines": ", ".join(b for b in settings["baselines"])
            + f" (linear baseline embedding: {embedding_name})",
            "metrics": f"log1p(normalize_total 1e4) space, top {settings['n_top_de']} DE genes",
            "notes": notes,
        }
        cell_eval_score = None
        if cell_eval:
            pd.concat(cell_eval_frames, ignore_index=True).to_csv(
                out / "cell_eval.csv", index=False
            )
            cell_eval_score = pd.concat(cell_eval_scores, ignore_index=True)
            cell_eval_score.to_csv(out / "cell_eval_score.csv", index=False)
        vcc = None
        if replicate:
            replicated_df = pool_discrimination(
                pd.concat([f[0] for f in replicate_frames], ignore_index=True),
                pd.concat([f[1] for f in replicate_frames], ignore_index=True),
                separator,
                control,
            )
            replicated_df.to_csv(out / "replicate_metrics.csv", index=False)
            vcc = metrics.vcc_scores(
                replicated_df,
                metrics=headline_metrics(settings["n_top_de"], nontarget=False),
                n_boot=int(n_boot),
                seed=settings["seed"],
            )
            vcc.to_csv(out / "vcc_score.csv", index=False)
        _write_summary_md(
            out / "summary.md",
            summary,
            df,
            header,
            infos,
            metric_order,
            paired,
            cell_eval=cell_eval_score,
            vcc=vcc,
        )
        if plots:
            profiles_all = pd.concat(profile_frames, ignore_index=True) if profile_frames else None
            _plot_all(
                out,
                summary,
                profiles_all if profiles_all is not None else pd.DataFrame(),
                histories,
                settings["n_top_de"],
                df,
            )
        console.log(f"done in {wall:.0f} s: {out / 'summary.md'}")
        return out
    finally:
        torch.set_num_threads(previous_threads)


def _write_replicate(paths: tuple[Path, Path], result: pd.DataFrame, deltas: pd.DataFrame) -> None:
    _write_atomic(paths[0], lambda p: result.to_csv(p, index=False))
    _write_atomic(paths[1], lambda p: deltas.to_csv(p, index=False, compression="gzip"))


def _fold_frame(deltas: pd.DataFrame, fold: int) -> pd.DataFrame:
    """A fold's Δ table (rows ``"<method>|<label>"``) as stored: ``fold``, ``row``, genes."""
    frame = deltas.rename_axis("row").reset_index()
    frame.insert(0, "fold", fold)
    return frame


def _cell_eval_frames(
    fold: int, tables: dict[str, pd.DataFrame] | None, info: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One fold's cell-eval tables with a ``fold`` column (empty when PertTX predicted none of
    the fold's labels); its errors go to ``info["cell_eval_errors"]``."""
    if tables is None:
        per_label = pd.DataFrame(columns=["method", "perturbation", "metric", "value"])
        score = pd.DataFrame(columns=["metric", "PertTX", "train_mean", "from_baseline"])
        info["cell_eval_errors"] = ["PertTX predicted none of the fold's labels"]
    else:
        per_label, score = tables["per_perturbation"].copy(), tables["score"].copy()
        info["cell_eval_errors"] = list(tables["errors"]["error"])
    per_label.insert(0, "fold", fold)
    score.insert(0, "fold", fold)
    return per_label, score


def _python_call(data: Any, out: Path, quick: bool) -> str:
    shown = "AnnData" if isinstance(data, AnnData) else repr(os.fspath(data))
    return f"pertx_scvi.benchmark.benchmark({shown}, out={os.fspath(out)!r}, quick={quick})"
