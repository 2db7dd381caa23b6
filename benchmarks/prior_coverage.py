"""Which prior source reaches each held-out target of a k-fold benchmark through trained genes.

Usage::

    python benchmarks/prior_coverage.py --data papalexi2021 --graph go,omnipath,trrust,string \\
        --metrics papalexi_bench/metrics.csv --out prior_coverage

For every label of the data set (split as ``pertx benchmark`` splits it: same ``--folds`` and
``--seed``), :func:`pertx_scvi.graphs.target_coverage` counts, per source, the neighbours of the
target gene that are trained when the target is held out. With ``--metrics`` (a benchmark's
``metrics.csv``) the table also gets each target's strength (split-half r of its observed
effect) and PertTX's and the best baseline's Pearson Δ. Writes ``<out>/coverage.csv`` (long)
and ``<out>/coverage.md`` (targets x sources).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import pertx_scvi as px
from pertx_scvi.benchmark import _sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="papalexi2021")
    parser.add_argument("--graph", default="go,omnipath,trrust,string")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("prior_coverage"))
    args = parser.parse_args()

    data = _sources._load_data(args.data, None, None, None, False, args.seed)
    labels = data.adata.obs[data.perturbation_key].astype(str).unique()
    folds = px.benchmark.kfold_perturbations(
        labels, args.folds, args.seed, control_group=data.control_group
    )
    every = [g for fold in folds for g in fold]
    trained = {t: [g for g in every if g not in fold] for fold in folds for t in fold}
    graphs, names = _sources.load_graphs(args.graph)
    id_table = px.datasets.find_data_file(_sources.ID_TABLE_FILE)
    coverage = px.graphs.target_coverage(
        dict(zip(names, graphs, strict=True)), every, trained, id_table
    )

    args.out.mkdir(parents=True, exist_ok=True)
    coverage.to_csv(args.out / "coverage.csv", index=False)
    cells = coverage.assign(
        cell=[
            "absent" if node is None else f"{n} ({hits})" if n else "0"
            for node, n, hits in zip(
                coverage["node"],
                coverage["n_trained_neighbours"],
                coverage["trained_neighbours"],
                strict=True,
            )
        ]
    )
    table = cells.pivot(index="target", columns="source", values="cell")[names]
    table.insert(0, "fold", pd.Series({t: k for k, fold in enumerate(folds) for t in fold}))
    if args.metrics is not None:
        table = table.join(_outcomes(pd.read_csv(args.metrics)))
    table = table.sort_values(["fold"])
    (args.out / "coverage.md").write_text(table.to_markdown() + "\n")
    print(table.to_string())


def _outcomes(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per target: split-half r, gene measured, Pearson Δ of PertTX and of the best baseline."""
    rows = metrics[metrics["metric"] == "pearson_delta"]
    per = rows.pivot_table(index="perturbation", columns="method", values="value")
    baselines = per.drop(columns=[c for c in per.columns if c.startswith("PertTX")])
    first = rows.groupby("perturbation").first()
    return pd.DataFrame(
        {
            "split_half_r": first["split_half_r"].round(2),
            "measured": first["target_measured"],
            "PertTX": per["PertTX"].round(2),
            "best baseline": baselines.max(axis=1).round(2),
            "which": baselines.idxmax(axis=1),
        }
    )


if __name__ == "__main__":
    main()
