"""PertTX under several settings on the same folds: one benchmark run per arm, compared paired.

Usage::

    python benchmarks/ablation.py --data papalexi2021 --out ablation_papalexi \\
        --arm go: --arm go_tokens:gene_token_embedding=go --arm none:graph=none
    python benchmarks/ablation.py --quick --arm default: --arm no_retrieval:effect_retrieval=false

Each ``--arm NAME:KEY=VALUE,KEY=VALUE`` is one :func:`pertx_scvi.benchmark.benchmark` run into
``<out>/<NAME>/`` with the same data, folds, seed and settings; ``graph=`` (``go``,
``go,omnipath``, ``none``...) sets the arm's gene graph (default: ``--graph``),
``shuffled_graph=true`` also trains the arm's model on degree-preserving shuffles of its graphs
(reported as the arm ``<NAME>_shuffled``), every other key is a :class:`~pertx_scvi.PertTX`
argument (``model_options``; VALUE read as JSON, else text).
Runs already in ``<out>`` are reused (the benchmark's fold cache). The first arm is the
reference: the table gives, per headline metric, PertTX's mean in each arm and the paired
difference from the reference (95 % bootstrap interval over the held-out perturbations,
:func:`pertx_scvi.metrics.paired_differences`), and is written to ``<out>/ablation.md`` and
``<out>/ablation.csv``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import pandas as pd

import pertx_scvi as px

HEADLINE = ("pearson_delta", "pearson_delta_top20", "mse_top20", "discrimination")


def parse_arm(spec: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,...`` as ``(name, options)`` (values as JSON where they parse)."""
    name, _, rest = spec.partition(":")
    options = {}
    # a comma starts a new KEY=VALUE only before "KEY=": graph=go,omnipath stays one value
    for item in filter(None, (part.strip() for part in re.split(r",(?=\s*\w+=)", rest))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arm {spec!r}: {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def pertx_rows(run: Path, arm: str) -> pd.DataFrame:
    """PertTX's per-perturbation headline values of one run, named ``arm``; the run's shuffled
    graph twin, if it has one, as ``<arm>_shuffled``."""
    table = pd.read_csv(run / "metrics.csv")
    table = table[table["metric"].isin(HEADLINE)]
    names = {"PertTX": arm, "PertTX_shuffled_graph": f"{arm}_shuffled"}
    table = table[table["method"].isin(list(names))]
    return table.assign(method=table["method"].map(names))


def compare(out: Path, arms: list[str], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Means per arm and paired differences from the first arm, per headline metric."""
    rows = pd.concat([pertx_rows(out / arm, arm) for arm in arms], ignore_index=True)
    arms = list(dict.fromkeys(rows["method"]))
    reference = arms[0]
    means = rows.groupby(["method", "metric"])["value"].mean().unstack("metric")
    paired = px.metrics.paired_differences(
        rows, reference=reference, metrics=list(HEADLINE), seed=seed
    )
    return means.loc[arms, [m for m in HEADLINE if m in means.columns]], paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, help="NAME:KEY=VALUE,...")
    parser.add_argument("--data", default="papalexi2021")
    parser.add_argument("--graph", default="auto")
    parser.add_argument("--out", default="ablation")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    out = Path(args.out)
    names = []
    for spec in args.arm:
        name, options = parse_arm(spec)
        graph = options.pop("graph", args.graph)
        shuffled = bool(options.pop("shuffled_graph", False))
        started = time.perf_counter()
        px.benchmark.benchmark(
            "simulated" if args.quick else args.data,
            out=out / name,
            graph=None if graph == "none" else graph,
            folds=args.folds,
            seed=args.seed,
            threads=args.threads,
            quick=args.quick,
            shuffled_graph=shuffled,
            model_options=options or None,
            plots=False,
            progress=False,
        )
        print(f"arm {name}: {time.perf_counter() - started:.0f} s", flush=True)
        names.append(name)
    means, paired = compare(out, names, args.seed)
    means.to_csv(out / "ablation_means.csv")
    paired.to_csv(out / "ablation.csv", index=False)
    print(means.round(3).to_string())
    print(paired.to_string(index=False))


if __name__ == "__main__":
    main()
