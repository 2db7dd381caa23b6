"""Interoperability with cell-eval (Arc Institute; the scorer of the Virtual Cell Challenge).

cell-eval (PyPI ``cell-eval``, optional: ``pip install pertx-scvi[celleval]``) compares a
*predicted* and a *real* AnnData of single cells. Its contract (``cell_eval.MetricsEvaluator``,
``PerturbationAnndataPair``):

- both have the same genes in the same order (``var_names``);
- both have the perturbation column (``pert_col``, ``target_gene`` by default on its command
  line) with the *same set* of labels, the control label (``non-targeting`` by default)
  included: the predicted Δ of a perturbation is its predicted cells minus the predicted
  file's control cells, the real Δ its real cells minus the real file's controls;
- ``X`` is log1p-normalised (non-integer values in [0, 15)); integer data is taken for raw
  counts and normalised to the *median* library size, which is not PertTX's
  ``normalize_total(target_sum=1e4)``. :func:`to_cell_eval` therefore writes both files
  already in log1p(normalize_total 1e4) space, the space of every PertTX metric.

:func:`to_cell_eval` builds that pair from :meth:`pertx_scvi.PertTX.predict_perturbation`
output and the held-out real cells; :func:`score_with_cell_eval` runs cell-eval on it, and
optionally on a baseline prediction (e.g. the train-mean profile) for cell-eval's
baseline-normalised score (``cell_eval.score_agg_metrics``). Nothing here imports torch;
cell-eval itself is imported only by :func:`score_with_cell_eval`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._utils import check_labels, log_normalize

__all__ = [
    "CELL_EVAL_CONTROL",
    "CELL_EVAL_INSTALL",
    "CELL_EVAL_PERT_COL",
    "CellEvalScores",
    "require_cell_eval",
    "score_with_cell_eval",
    "to_cell_eval",
]

CELL_EVAL_PERT_COL = "target_gene"
"""Perturbation column of the written files (``cell-eval run --pert-col`` default)."""

CELL_EVAL_CONTROL = "non-targeting"
"""Control label of the written files (``cell-eval run --control-pert`` default)."""

CELL_EVAL_INSTALL = "pip install pertx-scvi[celleval]"

_LOG1P_MAX = 15.0  # cell-eval's guess_is_lognorm: log1p data lies in [0, 15)
_VALUES = "log1p(normalize_total(target_sum=1e4))"


def require_cell_eval() -> ModuleType:
    """Import cell-eval, or raise an :class:`ImportError` that says how to install it.

    Returns
    -------
    module
        The ``cell_eval`` package.
    """
    try:
        return importlib.import_module("cell_eval")
    except ImportError as error:
        raise ImportError(
            f"scoring with cell-eval needs the optional extra: {CELL_EVAL_INSTALL} "
            f"(PyPI package cell-eval; import failed: {error})"
        ) from error


def _matrix(adata: ad.AnnData, layer: str | None, what: str):
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            raise ValueError(
                f"{what}: layer {layer!r} not in layers (available: {list(adata.layers.keys())})"
            )
        X = adata.layers[layer]
    if X is None:
        raise ValueError(f"{what}: no expression matrix (X is None)")
    return X


def _log1p_values(
    adata: ad.AnnData, layer: str | None, what: str
) -> np.ndarray | sparse.csr_matrix:
    """float32 log1p(normalize_total 1e4) values of ``adata``: counts (integers) are normalised,
    values already in log1p range kept; anything else is an error naming ``what``."""
    X = _matrix(adata, layer, what)
    values = X.data if sparse.issparse(X) else np.asarray(X)
    where = f"{what}" + ("" if layer is None else f" (layers[{layer!r}])")
    if values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"{where} has NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0:
            raise ValueError(
                f"{where} has negative values (min {low:.3g}): cell-eval reads raw counts or "
                f"{_VALUES} values, both >= 0"
            )
        if np.array_equal(values, np.round(values)):
            return log_normalize(adata, layer)
        if high >= _LOG1P_MAX:
            raise ValueError(
                f"{where} holds non-integer values up to {high:.3g}: neither raw counts nor "
                f"{_VALUES} values (below {_LOG1P_MAX:g}), e.g. predicted mean counts "
                "(predict_perturbation's layers['mean']); pass X (expected log-normalised) or "
                "layers['counts']"
            )
    if sparse.issparse(X):
        return sparse.csr_matrix(X, dtype=np.float32, copy=True)
    return np.array(X, dtype=np.float32)


def _shown(items: Sequence[Any], limit: int = 10) -> str:
    items = list(items)
    text = ", ".join(map(repr, items[:limit]))
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _labels(adata: ad.AnnData, key: str, what: str) -> np.ndarray:
    if key not in adata.obs.columns:
        raise ValueError(
            f"{what}: perturbation column {key!r} not in obs (columns: {list(adata.obs.columns)})"
        )
    return adata.obs[key].astype(str).to_numpy()


def _gene_positions(var_names: pd.Index, genes: pd.Index, what: str) -> np.ndarray:
    var_names = pd.Index(var_names.astype(str))
    duplicated = var_names[var_names.duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{what}: duplicated gene names {_shown(duplicated)}")
    positions = var_names.get_indexer(genes)
    missing = genes[positions < 0]
    if len(missing):
        raise ValueError(
            f"{what} lacks {len(missing)} of the {len(genes)} genes: {_shown(missing)}"
        )
    return positions


def _block(
    adata: ad.AnnData, rows: np.ndarray, layer: str | None, genes: pd.Index, what: str
) -> np.ndarray | sparse.csr_matrix:
    """Rows of ``adata`` in log1p space (library sizes over all of its genes), genes ordered."""
    positions = _gene_positions(adata.var_names, genes, what)
    subset = adata[np.asarray(rows)]
    values = _log1p_values(subset, layer, what)
    return values[:, positions]


def _stack(blocks: Sequence[np.ndarray | sparse.spmatrix]):
    if all(sparse.issparse(b) for b in blocks):
        return sparse.vstack(blocks, format="csr", dtype=np.float32)
    dense = [b.toarray() if sparse.issparse(b) else np.asarray(b) for b in blocks]
    return np.vstack(dense).astype(np.float32, copy=False)


def _assemble(X, labels: np.ndarray, names: np.ndarray, genes: pd.Index, pert_col: str, meta):
    obs = pd.DataFrame(
        {pert_col: pd.Categorical(labels, categories=list(pd.unique(labels)))},
        index=pd.Index(np.asarray(names, dtype=str)),
    )
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out.obs_names_make_unique()
    out.uns["pertx_scvi"] = dict(meta)
    return out


def to_cell_eval(
    pred: ad.AnnData,
    real: ad.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_group: str = "control",
    pred_perturbation_key: str | None = None,
    pred_controls: ad.AnnData | None = None,
    layer: str | None = None,
    pred_layer: str | None = None,
    perturbations: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    match_cell_counts: bool = False,
    seed: int = 0,
    pert_col: str = CELL_EVAL_PERT_COL,
    control_pert: str = CELL_EVAL_CONTROL,
    write_dir: str | os.PathLike | None = None,
) -> tuple[ad.AnnData, ad.AnnData]:
    """The (predicted, real) AnnData pair that cell-eval reads.

    Both outputs have the same genes in the same order, one perturbation column ``pert_col``
    with the same labels (the control renamed ``control_pert``), control cells in both, and
    ``X`` in log1p(normalize_total 1e4) space (float32), the space of PertTX's own metrics.

    Parameters
    ----------
    pred
        Predicted cells, e.g. :meth:`pertx_scvi.PertTX.predict_perturbation` output (``X``:
        expected log-normalised values; ``layers["counts"]``: sampled counts). Raw counts are
        log-normalised; log1p values are kept. Its rows labelled ``control_group`` (if any) are
        its control cells, unless ``pred_controls`` is given.
    real
        Observed cells: the held-out perturbations' cells and the control cells their observed
        effects are measured against (raw counts in ``X`` or ``layers[layer]``, or log1p
        values). Labels not predicted are left out.
    perturbation_key, control_group
        Label column of ``real`` (and of ``pred``, see below) and the control label.
    pred_perturbation_key
        Label column of ``pred``; default ``perturbation_key`` when ``pred`` has it, else
        ``"perturbation"`` (the column ``predict_perturbation`` writes).
    pred_controls
        Control cells of the prediction: the source cells the prediction started from (for
        ``pertx benchmark``, the fitting controls; counts in ``X`` / ``layers[layer]``).
        cell-eval takes the predicted Δ against them. Default: ``pred``'s own control rows,
        else ``real``'s control cells, with a warning (the predicted and observed Δ then share
        one control mean, whose noise inflates their agreement).
    layer
        Layer of ``real`` and ``pred_controls`` holding their values (default ``X``).
    pred_layer
        Layer of ``pred`` to write (default ``X``; ``"counts"`` writes the log-normalised
        sampled counts).
    perturbations
        Labels to keep (default: every non-control label of ``pred``).
    genes
        Genes and their order (default ``pred.var_names``). Counts are normalised over all
        genes of their AnnData before genes are selected.
    match_cell_counts
        Subsample each perturbation's predicted cells (seeded; with replacement where fewer are
        predicted) to the number of real cells of that perturbation, as cell-eval's Virtual
        Cell Challenge protocol predicts as many cells as were observed. cell-eval's DE-based
        metrics (Wilcoxon tests per perturbation) depend on the cell numbers.
    seed
        Seed of ``match_cell_counts``.
    pert_col, control_pert
        Perturbation column and control label of the outputs (default: cell-eval's command-line
        defaults ``target_gene`` and ``non-targeting``, so that ``cell-eval run -ap pred.h5ad
        -ar real.h5ad`` reads them as they are).
    write_dir
        When given, also write ``pred.h5ad`` and ``real.h5ad`` into this folder (created).

    Returns
    -------
    pred_cell_eval, real_cell_eval
        New AnnData objects; the inputs are not modified.

    Raises
    ------
    ValueError
        A missing column, layer or gene, a predicted label without real cells, no control
        cells, a label that collides with ``control_pert``, or values that are neither counts
        nor log1p values (the message names which).
    """
    control_group = str(control_group)
    real_labels = check_labels(real, perturbation_key, control_group)
    if pred_perturbation_key is None:
        pred_perturbation_key = (
            perturbation_key if perturbation_key in pred.obs.columns else "perturbation"
        )
    pred_labels = _labels(pred, pred_perturbation_key, "pred")
    predicted = [p for p in pd.unique(pred_labels) if p != control_group]
    if perturbations is None:
        wanted = predicted
    else:
        wanted = [str(p) for p in pd.unique(np.asarray(perturbations, dtype=str))]
        wanted = [p for p in wanted if p != control_group]
        absent = [p for p in wanted if p not in set(predicted)]
        if absent:
            raise ValueError(
                f"pred has no cells of perturbation(s) {_shown(absent)} in "
                f"obs[{pred_perturbation_key!r}] (predicted: {_shown(predicted)})"
            )
    if not wanted:
        raise ValueError(
            f"pred has no perturbed cells: every label in obs[{pred_perturbation_key!r}] is the "
            f"control {control_group!r}"
        )
    unobserved = [p for p in wanted if p not in set(real_labels)]
    if unobserved:
        raise ValueError(
            f"real has no cells of predicted perturbation(s) {_shown(unobserved)} in "
            f"obs[{perturbation_key!r}]: cell-eval needs the same labels in both (pass "
            "perturbations= to score a subset)"
        )
    if control_pert in wanted:
        raise ValueError(
            f"perturbation label {control_pert!r} is the control label of the output "
            f"(control_pert); pass another control_pert"
        )
    genes = pd.Index(pred.var_names.astype(str) if genes is None else [str(g) for g in genes])
    if genes.empty:
        raise ValueError("no genes to write")
    if genes.has_duplicates:
        raise ValueError(f"genes has duplicates: {_shown(genes[genes.duplicated()].unique())}")

    # Predicted perturbed cells, optionally as many per label as were observed.
    rng = np.random.default_rng(seed)
    rows = []
    for label in wanted:
        idx = np.flatnonzero(pred_labels == label)
        if match_cell_counts:
            n_real = int((real_labels == label).sum())
            idx = np.sort(rng.choice(idx, size=n_real, replace=len(idx) < n_real))
        rows.append(idx)
    pred_rows = np.concatenate(rows)
    blocks = [_block(pred, pred_rows, pred_layer, genes, "pred")]
    out_labels = [pred_labels[pred_rows]]
    names = [np.asarray(pred.obs_names)[pred_rows]]

    # The prediction's control cells.
    if pred_controls is not None:
        if pred_controls.n_obs == 0:
            raise ValueError("pred_controls has no cells")
        control_rows = np.arange(pred_controls.n_obs)
        blocks.append(_block(pred_controls, control_rows, layer, genes, "pred_controls"))
        names.append(np.asarray(pred_controls.obs_names))
        source = "pred_controls"
    elif (pred_labels == control_group).any():
        control_rows = np.flatnonzero(pred_labels == control_group)
        blocks.append(_block(pred, control_rows, pred_layer, genes, "pred"))
        names.append(np.asarray(pred.obs_names)[control_rows])
        source = "pred"
    else:
        warnings.warn(
            "to_cell_eval: pred has no control cells and no pred_controls were given, so the "
            "real control cells stand for the prediction's controls too: predicted and observed "
            "Δ then share one control mean, whose noise inflates their agreement (pass the "
            "source cells of the prediction as pred_controls)",
            UserWarning,
            stacklevel=2,
        )
        control_rows = np.flatnonzero(real_labels == control_group)
        blocks.append(_block(real, control_rows, layer, genes, "real"))
        names.append(np.asarray(real.obs_names)[control_rows])
        source = "real"
    out_labels.append(np.full(len(control_rows), control_pert, dtype=object))

    meta = {
        "source": "pertx_scvi.metrics.to_cell_eval",
        "values": _VALUES,
        "perturbation_key": str(perturbation_key),
        "control_group": control_group,
    }
    pred_out = _assemble(
        _stack(blocks),
        np.concatenate(out_labels).astype(str),
        np.concatenate(names),
        genes,
        pert_col,
        {**meta, "controls_from": source},
    )

    keep = np.isin(real_labels, wanted) | (real_labels == control_group)
    real_rows = np.flatnonzero(keep)
    labels = np.where(real_labels[real_rows] == control_group, control_pert, real_labels[real_rows])
    real_out = _assemble(
        _block(real, real_rows, layer, genes, "real"),
        labels.astype(str),
        np.asarray(real.obs_names)[real_rows],
        genes,
        pert_col,
        meta,
    )
    if write_dir is not None:
        folder = Path(write_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        pred_out.write_h5ad(folder / "pred.h5ad")
        real_out.write_h5ad(folder / "real.h5ad")
    return pred_out, real_out


def _baseline_prediction(
    baseline: pd.Series | pd.DataFrame, pred_ce: ad.AnnData, pert_col: str, control_pert: str
) -> ad.AnnData:
    """``pred_ce`` with every perturbed cell replaced by the baseline's profile of its label
    (a Series: one profile for all; a DataFrame: labels x genes); control cells unchanged."""
    genes = pred_ce.var_names
    labels = pred_ce.obs[pert_col].astype(str).to_numpy()
    perturbed = labels != control_pert
    if isinstance(baseline, pd.Series):
        missing = genes[~genes.isin(baseline.index.astype(str))]
        if len(missing):
            raise ValueError(f"baseline profile lacks genes {_shown(missing)}")
        profile = baseline.set_axis(baseline.index.astype(str)).reindex(genes).to_numpy(float)
        values = np.tile(profile, (int(perturbed.sum()), 1))
    else:
        table = baseline.set_axis(baseline.index.astype(str)).set_axis(
            baseline.columns.astype(str), axis=1
        )
        missing = genes[~genes.isin(table.columns)]
        if len(missing):
            raise ValueError(f"baseline profiles lack genes {_shown(missing)}")
        absent = sorted(set(labels[perturbed]) - set(table.index))
        if absent:
            raise ValueError(f"baseline profiles lack perturbation(s) {_shown(absent)}")
        values = table.loc[labels[perturbed], list(genes)].to_numpy(float)
    if values.size and (not np.isfinite(values).all() or values.min() < 0):
        raise ValueError("baseline profiles must be finite log1p values (>= 0)")
    if values.size and values.max() >= _LOG1P_MAX:
        raise ValueError(
            f"baseline profiles reach {values.max():.3g}: not log1p(normalize_total 1e4) values"
        )
    X = pred_ce.X.toarray() if sparse.issparse(pred_ce.X) else np.array(pred_ce.X)
    X = X.astype(np.float32)
    X[perturbed] = values
    out = ad.AnnData(X=X, obs=pred_ce.obs.copy(), var=pred_ce.var.copy())
    out.uns["pertx_scvi"] = {**dict(pred_ce.uns.get("pertx_scvi", {})), "baseline": "profiles"}
    return out


def _to_pandas(frame: Any) -> pd.DataFrame:
    """A polars DataFrame as pandas, without needing pyarrow."""
    return pd.DataFrame(frame.to_dict(as_series=False))


@dataclass
class CellEvalScores:
    """What :func:`score_with_cell_eval` returns.

    Attributes
    ----------
    results
        cell-eval's per-perturbation metrics (index: perturbation; one column per metric).
    agg
        Its aggregate table (``describe()`` over perturbations: index ``statistic``, e.g.
        ``mean``).
    baseline_results, baseline_agg
        The same for the baseline prediction (``None`` without one).
    score
        cell-eval's baseline-normalised score (``cell_eval.score_agg_metrics`` on the means):
        index metric, column ``from_baseline`` (0: no better than the baseline, 1: perfect;
        clipped at 0), with the row ``avg_score`` (its mean over metrics); ``None`` without a
        baseline.
    errors
        Messages of the metrics cell-eval could not compute (it logs and skips them).
    version
        cell-eval's version.
    """

    results: pd.DataFrame
    agg: pd.DataFrame
    baseline_results: pd.DataFrame | None = None
    baseline_agg: pd.DataFrame | None = None
    score: pd.DataFrame | None = None
    errors: list[str] = field(default_factory=list)
    version: str = ""

    def tidy(self, method: str = "prediction", baseline: str = "baseline") -> pd.DataFrame:
        """Per-perturbation metrics in long form: columns method, perturbation, metric, value."""
        frames = []
        for name, table in ((method, self.results), (baseline, self.baseline_results)):
            if table is None or table.empty:
                continue
            long = table.rename_axis("perturbation").reset_index()
            long = long.melt(id_vars="perturbation", var_name="metric", value_name="value")
            long.insert(0, "method", name)
            frames.append(long)
        if not frames:
            return pd.DataFrame(columns=["method", "perturbation", "metric", "value"])
        out = pd.concat(frames, ignore_index=True)
        out["value"] = pd.to_numeric(out["value"], errors="coerce")
        return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_cell_eval(quiet: bool) -> Iterator[_Collect]:
    """Collect cell-eval's metric errors; with ``quiet``, hide its INFO logs and progress bars."""
    collect = _Collect()
    names = ("cell_eval", "pdex")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    propagate = [lg.propagate for lg in loggers]
    loggers[0].addHandler(collect)
    try:
        if quiet:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
                lg.propagate = False
            with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield collect
        else:
            yield collect
    finally:
        loggers[0].removeHandler(collect)
        for lg, level, flag in zip(loggers, levels, propagate, strict=True):
            lg.setLevel(level)
            lg.propagate = flag


def score_with_cell_eval(
    pred: ad.AnnData,
    real: ad.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_group: str = "control",
    baseline: ad.AnnData | pd.Series | pd.DataFrame | None = None,
    profile: str = "full",
    num_threads: int = 1,
    outdir: str | os.PathLike | None = None,
    quiet: bool = True,
    **kwargs: Any,
) -> CellEvalScores:
    """Score a prediction with cell-eval (``cell_eval.MetricsEvaluator``), and optionally
    normalise it against a baseline (``cell_eval.score_agg_metrics``).

    Parameters
    ----------
    pred, real, perturbation_key, control_group
        As in :func:`to_cell_eval`, which prepares both (outputs already in cell-eval's form
        are converted again unchanged, with ``perturbation_key="target_gene"``,
        ``control_group="non-targeting"``).
    baseline
        A baseline prediction to normalise against: an AnnData like ``pred`` (converted with
        the same arguments), a Series (genes; one log1p(normalize_total 1e4) profile for every
        perturbation, e.g. :func:`~pertx_scvi.metrics.perturbed_mean_profile` of the training
        cells: the train-mean baseline) or a DataFrame (perturbations x genes). Profiles get
        the same cells per perturbation and the same control cells as ``pred``.
    profile
        cell-eval's metric profile: ``"full"`` (default), ``"minimal"``, ``"vcc"``, ``"de"``,
        ``"anndata"``.
    num_threads
        Threads of cell-eval's differential expression (pdex).
    outdir
        Folder for cell-eval's own files (DE tables, ``results.csv``, ``agg_results.csv``,
        ``baseline_*``, ``score.csv``); default a temporary folder, removed afterwards.
    quiet
        Hide cell-eval's INFO logs, progress bars and warnings.
    **kwargs
        Further arguments of :func:`to_cell_eval` (``pred_controls``, ``layer``,
        ``pred_layer``, ``perturbations``, ``genes``, ``match_cell_counts``, ``seed``, ...).

    Returns
    -------
    CellEvalScores
        Per-perturbation and aggregate metrics, the baseline's, and the baseline-normalised
        score.

    Raises
    ------
    ImportError
        Without cell-eval (``pip install pertx-scvi[celleval]``).
    """
    cell_eval = require_cell_eval()
    if "write_dir" in kwargs:
        raise TypeError("score_with_cell_eval has no write_dir; call to_cell_eval to write files")
    pert_col = kwargs.get("pert_col", CELL_EVAL_PERT_COL)
    control_pert = kwargs.get("control_pert", CELL_EVAL_CONTROL)
    convert = {"perturbation_key": perturbation_key, "control_group": control_group, **kwargs}
    pred_ce, real_ce = to_cell_eval(pred, real, **convert)
    base_ce = None
    if isinstance(baseline, ad.AnnData):
        base_ce, _ = to_cell_eval(baseline, real, **convert)
    elif isinstance(baseline, pd.Series | pd.DataFrame):
        base_ce = _baseline_prediction(baseline, pred_ce, pert_col, control_pert)
    elif baseline is not None:
        raise TypeError(
            f"baseline must be an AnnData, a Series or a DataFrame, got {type(baseline).__name__}"
        )

    try:
        version = importlib.metadata.version("cell-eval")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(cell_eval, "__version__", "")
    with contextlib.ExitStack() as stack:
        folder = (
            Path(outdir).expanduser()
            if outdir is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cell_eval_")))
        )
        folder.mkdir(parents=True, exist_ok=True)
        collect = stack.enter_context(_quiet_cell_eval(quiet))
        common = {
            "control_pert": control_pert,
            "pert_col": pert_col,
            "num_threads": int(num_threads),
            "outdir": str(folder),
        }
        evaluator = cell_eval.MetricsEvaluator(adata_pred=pred_ce, adata_real=real_ce, **common)
        results, agg = evaluator.compute(profile=profile, write_csv=outdir is not None)
        base_results = base_agg = score = None
        if base_ce is not None:
            # The real cells' DE (written by the first evaluator) is reused, not recomputed.
            base_evaluator = cell_eval.MetricsEvaluator(
                adata_pred=base_ce,
                adata_real=real_ce,
                de_real=str(folder / "real_de.csv"),
                prefix="baseline",
                **common,
            )
            base_results, base_agg = base_evaluator.compute(
                profile=profile, write_csv=outdir is not None
            )
            shared = [c for c in agg.columns if c in base_agg.columns]
            missing = sorted(set(agg.columns) ^ set(base_agg.columns))
            if missing:
                collect.messages.append(
                    f"metrics computed for only one of prediction and baseline, left out of the "
                    f"score: {', '.join(missing)}"
                )
            score = cell_eval.score_agg_metrics(
                results_user=agg.select(shared),
                results_base=base_agg.select(shared),
                output=str(folder / "score.csv") if outdir is not None else None,
            )
        errors = list(collect.messages)

    def indexed(frame, column: str) -> pd.DataFrame | None:
        if frame is None:
            return None
        table = _to_pandas(frame)
        return table.set_index(column) if column in table.columns else table

    return CellEvalScores(
        results=indexed(results, "perturbation"),
        agg=indexed(agg, "statistic"),
        baseline_results=indexed(base_results, "perturbation"),
        baseline_agg=indexed(base_agg, "statistic"),
        score=indexed(score, "metric"),
        errors=errors,
        version=version,
    )
