"""The benchmark's report: bootstrap summaries, markdown tables and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics

PLOT_METRICS = ("pearson_delta", "pearson_delta_top{n}", "mse_top{n}", "discrimination")


def _fmt(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return "n/a"
    if pd.isna(row["ci_low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _markdown_table(summary: pd.DataFrame, metric_order: Sequence[str]) -> str:
    """Metrics (rows) x methods (columns), ``mean [low, high]``, the best mean in bold."""
    from ..pl._summary import lower_is_better

    methods = list(pd.unique(summary["method"]))
    lines = [
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in metric_order:
        rows = summary[summary["metric"] == metric].set_index("method").reindex(methods)
        if rows["mean"].isna().all():
            continue
        means = rows["mean"].to_numpy(dtype=np.float64)
        best = np.nanargmin(means) if lower_is_better(metric) else np.nanargmax(means)
        cells = []
        for i, method in enumerate(methods):
            text = _fmt(rows.loc[method])
            cells.append(f"**{text}**" if i == best and text != "n/a" else text)
        arrow = " (↓)" if lower_is_better(metric) else ""
        lines.append(f"| {metric}{arrow} | " + " | ".join(cells) + " |")
    n = summary.groupby("method", sort=False)["n"].max().reindex(methods)
    lines.append("| n perturbations | " + " | ".join(str(int(v)) for v in n.fillna(0)) + " |")
    return "\n".join(lines)


HEADLINE_METRICS = (
    "pearson_delta",
    "pearson_delta_top{n}",
    "mse_top{n}",
    "discrimination",
    "pearson_delta_nontarget",
    "pearson_delta_top{n}_nontarget",
    "mse_top{n}_nontarget",
)


def headline_metrics(n_top_de: int, nontarget: bool = True) -> list[str]:
    """The headline metric names for ``n_top_de`` DE genes (optionally without the
    ``_nontarget`` variants)."""
    names = [m.format(n=int(n_top_de)) for m in HEADLINE_METRICS]
    return names if nontarget else [m for m in names if not m.endswith("_nontarget")]


def _sets(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """All perturbations, then strong / other, measured / unmeasured targets, subgroups."""
    parts = [("all", df)]
    for name, column, other in (
        ("strong_effect", "strong_effect", "other"),
        ("target_measured", "target_measured", "target_not_measured"),
    ):
        if column not in df.columns:
            continue
        flag = df[column].astype(bool)
        if 0 < flag.sum() < len(df):
            parts += [(name, df[flag]), (other, df[~flag])]
    subgroups = [s for s in pd.unique(df["subgroup"]) if isinstance(s, str)]
    if len(subgroups) > 1:
        parts += [(f"subgroup:{s}", df[df["subgroup"] == s]) for s in sorted(subgroups)]
    return parts


def _paired(
    df: pd.DataFrame, n_top_de: int, n_boot: int, seed: int, reference: str = "PertTX"
) -> pd.DataFrame:
    """PertTX minus every other method on the headline metrics, per set (column ``set``)."""
    if reference not in set(df["method"]):
        return pd.DataFrame()
    wanted = headline_metrics(n_top_de)
    frames = []
    for name, part in _sets(df):
        if reference not in set(part["method"]):
            continue
        paired = metrics.paired_differences(
            part, reference=reference, n_boot=n_boot, seed=seed, metrics=wanted
        )
        paired.insert(0, "set", name)
        frames.append(paired)
    return pd.concat(frames, ignore_index=True)


def _paired_table(paired: pd.DataFrame) -> list[str]:
    """Markdown: metrics (rows) x other methods (columns), ``difference [low, high] verdict``."""
    methods = list(pd.unique(paired["method"]))
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for metric in pd.unique(paired["metric"]):
        rows = paired[paired["metric"] == metric].set_index("method").reindex(methods)
        cells = []
        for method in methods:
            r = rows.loc[method]
            if pd.isna(r["difference"]):
                cells.append("n/a")
                continue
            text = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            if r["verdict"] in ("ahead", "behind"):
                text = f"**{text} {r['verdict']}**"
            elif r["verdict"] == "too few":
                text = f"{r['difference']:+.3f} (n={int(r['n'])})"
            cells.append(text)
        arrow = " (↓)" if metrics.lower_is_better(metric) else ""
        lines.append(f"| {metric}{arrow} | " + " | ".join(cells) + " |")
    return lines


def _summaries(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Summaries of the sets of :func:`_sets` (column ``set``)."""
    parts = _sets(df)
    frames = []
    for name, part in parts:
        if part.empty:
            continue
        summary = metrics.summarize(part, n_boot=n_boot, seed=seed)
        summary.insert(0, "set", name)
        frames.append(summary)
    return pd.concat(frames, ignore_index=True)


def _write_summary_md(
    path: Path,
    summary: pd.DataFrame,
    df: pd.DataFrame,
    header: dict[str, Any],
    infos: list[dict[str, Any]],
    metric_order: Sequence[str],
    paired: pd.DataFrame | None = None,
    cell_eval: pd.DataFrame | None = None,
    vcc: pd.DataFrame | None = None,
) -> None:
    lines = ["# PertTX benchmark", ""]
    lines += ["```", header["command"], "```", ""]
    for key in (
        "wall time",
        "data",
        "splits",
        "controls",
        "graph",
        "model",
        "training",
        "baselines",
        "metrics",
    ):
        if header.get(key):
            lines.append(f"- **{key}**: {header[key]}")
    lines.append("")
    titles = {
        "all": "All held-out perturbations",
        "strong_effect": "Strong-effect perturbations (split-half r of the observed Δ > 0.5)",
        "other": "Other perturbations (weak or irreproducible effects)",
        "target_measured": "Perturbations whose target gene is measured",
        "target_not_measured": "Perturbations whose target genes are not measured",
    }
    if paired is not None and not paired.empty:
        lines += [
            "## PertTX minus each method, paired over perturbations",
            "",
            "Mean difference (PertTX - method) with a 95 % paired bootstrap interval over the "
            "held-out perturbations (`pertx_scvi.metrics.paired_differences`); **ahead** / "
            "**behind** only where the interval excludes 0 (for (↓) metrics a negative "
            "difference is ahead). `discrimination` ranks every held-out perturbation of the "
            "run against all of them (cell-eval's definition, target genes left out; chance "
            "(N+1)/2N).",
            "",
        ]
        for name in pd.unique(paired["set"]):
            part = paired[paired["set"] == name]
            title = titles.get(name, f"Subgroup {name.split(':', 1)[-1]}")
            lines += [f"### {title}", "", *_paired_table(part), ""]
    for name in pd.unique(summary["set"]):
        part = summary[summary["set"] == name]
        title = titles.get(name, f"Subgroup {name.split(':', 1)[-1]}")
        labels = df if name == "all" else _subset(df, name)
        n_labels = labels[["fold", "perturbation"]].drop_duplicates().shape[0]
        lines += [f"## {title} ({n_labels})", "", _markdown_table(part, metric_order), ""]
        if name == "strong_effect":
            shown = sorted(pd.unique(labels["perturbation"]))
            lines += [f"Strong-effect perturbations: {', '.join(shown)}", ""]
        if name == "all" and "strong_effect" not in set(summary["set"]):
            kind = "strong" if df["strong_effect"].astype(bool).all() else "weak"
            lines += [
                f"Every held-out perturbation has a {kind} effect (split-half r of the observed "
                "Δ above / below 0.5), so there is no separate strong-effect table.",
                "",
            ]
    lines += [
        "Mean over held-out perturbations with a 95 % percentile bootstrap interval "
        "(`pertx_scvi.metrics.summarize`, resampling perturbations; every method resampled "
        "identically). Bold: best mean; (↓): lower is better. Metrics: "
        "`pertx_scvi.metrics.compare` and docs/benchmark.md.",
        "",
        "## Folds",
        "",
        "| fold | held out | train cells | train s | PertTX could not predict |",
        "|---|---|---|---|---|",
    ]
    for info in infos:
        held = ", ".join(info["held_out"][:12]) + (" ..." if len(info["held_out"]) > 12 else "")
        missing = ", ".join(info.get("pertx_missing", [])) or "-"
        lines.append(
            f"| {info['fold']} | {held} | {info.get('n_train_cells', '?')} | "
            f"{info.get('train_seconds', '?')} | {missing} |"
        )
    lines += ["", *_per_fold_tables(df, metric_order)]
    if cell_eval is not None:
        lines += _cell_eval_section(cell_eval, infos)
    if vcc is not None:
        lines += _vcc_section(vcc)
    notes = header.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    path.write_text("\n".join(lines) + "\n")


def _vcc_section(vcc: pd.DataFrame) -> list[str]:
    """Markdown lines of the Virtual Cell Challenge scores (``vcc_score.csv``)."""
    lines = [
        "## Virtual Cell Challenge score",
        "",
        "Every method scored again against half of each held-out perturbation's cells, with "
        "the other half as a prediction (`split_half`: the experiment repeated); "
        "s = (PertTX - best baseline) / (split_half - best baseline) per metric "
        "(`pertx_scvi.metrics.vcc_scores`): 0 no better than the strongest trivial predictor, "
        "1 as good as repeating the experiment. Interval: 95 % bootstrap over perturbations, "
        "the best baseline chosen again in each resample. All metrics in "
        "`replicate_metrics.csv`.",
        "",
        "| metric | best baseline | PertTX | baseline | split_half | s [95 % interval] |",
        "|---|---|---|---|---|---|",
    ]
    for row in vcc.itertuples():
        if pd.isna(row.method_mean):
            continue
        interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
        score = "n/a" if pd.isna(row.s) else f"{row.s:+.2f}{interval}"
        if row.verdict in ("ahead", "behind"):
            score = f"**{score} {row.verdict}**"
        elif row.verdict == "no room":
            score += " (split_half not better than the baseline)"
        arrow = " (↓)" if metrics.lower_is_better(row.metric) else ""
        lines.append(
            f"| {row.metric}{arrow} | {row.best_baseline} | {row.method_mean:.3f} | "
            f"{row.baseline_mean:.3f} | {row.replicate_mean:.3f} | {score} |"
        )
    return [*lines, ""]


def _cell_eval_section(score: pd.DataFrame, infos: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the cell-eval scores (``cell_eval_score.csv``: per fold and metric,
    cell-eval's means of PertTX and train mean and the baseline-normalised score)."""
    versions = sorted({str(v) for v in score.get("cell_eval_version", pd.Series()).dropna()})
    lines = [
        "## cell-eval",
        "",
        f"Scored with cell-eval {', '.join(versions) or ''} on every fold "
        "(`pertx_scvi.metrics.score_with_cell_eval`, profile `full`): PertTX's predicted cells "
        "(as many per held-out perturbation as were observed, predicted from the fitting "
        "controls, which are its control cells) and the train-mean prediction on the same "
        "cells, against the held-out cells and the reference controls, in log1p(normalize_total "
        "1e4) space. PertTX and train_mean: cell-eval's mean over a fold's perturbations, "
        "averaged over the folds. `from_baseline`: cell-eval's baseline-normalised score of "
        "PertTX against train mean (`cell_eval.score_agg_metrics`: 0 no better than train mean, "
        "1 perfect, clipped at 0), mean of the folds; `avg_score` its mean over the metrics. "
        "cell-eval ranks `discrimination_score_*` within a fold (PertTX's `discrimination` above "
        "pools all folds). Per perturbation: `cell_eval.csv`; per fold: `cell_eval_score.csv`.",
        "",
    ]
    if score.empty:
        return [*lines, "No fold was scored (PertTX predicted none of the held-out labels).", ""]
    metrics_order = list(pd.unique(score["metric"]))
    if "avg_score" in metrics_order:
        metrics_order.remove("avg_score")
        metrics_order.insert(0, "avg_score")
    means = score.groupby("metric")[["PertTX", "train_mean", "from_baseline"]].mean()
    folds = sorted(pd.unique(score["fold"]))
    lines += [
        "| metric | PertTX | train_mean | from_baseline | from_baseline per fold |",
        "|---|---|---|---|---|",
    ]

    def fmt(value: float) -> str:
        return "" if pd.isna(value) else f"{value:.3f}"

    for metric in metrics_order:
        row = means.loc[metric]
        part = score[score["metric"] == metric].set_index("fold")["from_baseline"]
        per_fold = ", ".join(fmt(part.get(k, float("nan"))) or "-" for k in folds)
        per_fold = "" if part.isna().all() else per_fold
        name = f"**{metric}**" if metric == "avg_score" else metric
        baseline = fmt(row["from_baseline"])
        baseline = f"**{baseline}**" if metric == "avg_score" and baseline else baseline
        lines.append(
            f"| {name} | {fmt(row['PertTX'])} | {fmt(row['train_mean'])} | {baseline} | "
            f"{per_fold} |"
        )
    errors = sorted({e for info in infos for e in info.get("cell_eval_errors", [])})
    if errors:
        lines += ["", "cell-eval could not compute (it skips these):", ""]
        lines += [f"- {e}" for e in errors]
    return [*lines, ""]


PER_FOLD_METRICS = ("pearson_delta", "pearson_delta_top", "mse_top", "discrimination_fold")


def _per_fold_tables(df: pd.DataFrame, metric_order: Sequence[str]) -> list[str]:
    """Markdown lines: per headline metric, the mean over each fold's perturbations per method
    (rows) and fold (columns), with the mean of the folds."""
    lines = ["## Per fold", "", "Mean over the fold's held-out perturbations.", ""]
    headline = [m for m in metric_order if m.rstrip("0123456789") in PER_FOLD_METRICS]
    methods = list(pd.unique(df["method"]))
    for metric in headline:
        part = df[df["metric"] == metric]
        if part.empty:
            continue
        table = part.groupby(["method", "fold"])["value"].mean().unstack("fold")
        table = table.reindex([m for m in methods if m in table.index])
        table["mean of folds"] = table.mean(axis=1)
        header = ["method", *[f"fold {c}" for c in table.columns[:-1]], "mean of folds"]
        lines += [f"### {metric}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for method, row in table.iterrows():
            cells = ["" if pd.isna(v) else f"{v:.3f}" for v in row]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _subset(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if name == "strong_effect":
        return df[df["strong_effect"].astype(bool)]
    if name == "other":
        return df[~df["strong_effect"].astype(bool)]
    if name.startswith("subgroup:"):
        return df[df["subgroup"] == name.split(":", 1)[1]]
    for flag, other in (("strong_effect", "other"), ("target_measured", "target_not_measured")):
        if name in (flag, other) and flag in df.columns:
            keep = df[flag].astype(bool)
            return df[keep] if name == flag else df[~keep]
    return df


def _plot_all(
    out: Path,
    summary: pd.DataFrame,
    profiles: pd.DataFrame,
    histories: dict[int, pd.DataFrame],
    n_top_de: int,
    df: pd.DataFrame,
) -> list[Path]:
    """Write the benchmark plots; return their paths."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover - a GUI backend already in use
            pass
    import matplotlib.pyplot as plt

    from .. import pl

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = [m.format(n=n_top_de) for m in PLOT_METRICS]
    for name in ("all", "strong_effect"):
        part = summary[summary["set"] == name]
        metric_list = [m for m in wanted if m in set(part["metric"])]
        if part.empty or not metric_list:
            continue
        path = plots / f"metric_bars_{name}.png"
        fig = pl.metric_bars(
            part.drop(columns="set"),
            save=path,
            metrics=metric_list,
            title=f"{name.replace('_', ' ')} perturbations: mean and 95 % interval",
        )
        plt.close(fig)
        written.append(path)
    all_metrics = summary[summary["set"] == "all"].drop(columns="set")
    if not all_metrics.empty:
        path = plots / "metric_bars_all_metrics.png"
        plt.close(pl.metric_bars(all_metrics, save=path))
        written.append(path)

    if not profiles.empty:
        fold_of = profiles["fold"].to_numpy()
        rows = pd.Index(profiles["row"].astype(str))
        values = profiles.drop(columns=["fold", "row"])
        predicted, observed, c_fit, c_ref = {}, {}, {}, {}
        for fold in pd.unique(fold_of):
            sel = fold_of == fold
            fold_rows, fold_values = rows[sel], values[sel]
            for row, vec in zip(fold_rows, fold_values.to_numpy(), strict=True):
                if row.startswith("PertTX:"):
                    predicted[row.split(":", 1)[1]] = (fold, vec)
                elif row.startswith("observed:"):
                    observed[row.split(":", 1)[1]] = (fold, vec)
                elif row == "control_fit":
                    c_fit[fold] = vec
                elif row == "control_reference":
                    c_ref[fold] = vec
        # Δ per fold, so each perturbation is taken against its own fold's controls.
        order = _plot_order(df, [p for p in observed if p in predicted])
        if order:
            genes = values.columns
            pred_delta = pd.DataFrame(
                [predicted[p][1] - c_fit[predicted[p][0]] for p in order],
                index=order,
                columns=genes,
            )
            obs_delta = pd.DataFrame(
                [observed[p][1] - c_ref[observed[p][0]] for p in order], index=order, columns=genes
            )
            zero = np.zeros(len(genes))
            path = plots / "effect_scatter.png"
            plt.close(pl.effect_scatter(pred_delta, obs_delta, zero, save=path, n_top_de=n_top_de))
            written.append(path)
            path = plots / "de_heatmap.png"
            plt.close(pl.de_heatmap(pred_delta, obs_delta, zero, save=path, ncols=2))
            written.append(path)
    for fold, history in sorted(histories.items()):
        if history.empty:
            continue
        path = plots / f"loss_curves_fold{fold}.png"
        try:
            plt.close(pl.loss_curves({c: history[c].dropna() for c in history}, save=path))
        except ValueError:
            continue
        written.append(path)
    return written


def _plot_order(df: pd.DataFrame, labels: Sequence[str], limit: int = 30) -> list[str]:
    """Strong-effect perturbations first (by split-half r), then the rest; at most ``limit``."""
    if not labels:
        return []
    per_label = df.drop_duplicates("perturbation").set_index("perturbation")
    r = per_label["split_half_r"].reindex(list(labels)).fillna(-np.inf)
    ordered = r.sort_values(ascending=False, kind="stable").index.tolist()
    return ordered[:limit]
