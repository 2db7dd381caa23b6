"""``pertx benchmark``: PertTX against simple baselines on held-out perturbations, fold by fold.

For each fold the held-out perturbations never reach training; PertTX is trained on the rest and
scored with :meth:`pertx_scvi.PertTX.evaluate` next to the baselines of
:func:`pertx_scvi.metrics.fit_baselines`, all fitted on the same training cells. The results of
every fold are written to ``<out>/folds/fold_<k>.csv`` as soon as the fold finishes, so a rerun
with the same settings skips finished folds; ``<out>/metrics.csv`` (tidy, all folds),
``<out>/summary.md`` (means and 95 % bootstrap intervals) and plots under ``<out>/plots/`` are
written at the end.

Splits (:func:`kfold_perturbations`, :func:`gears_splits`):

* ``kfold``: the non-control labels are sorted, permuted with
  ``numpy.random.default_rng(seed)`` and cut into ``folds`` consecutive groups; every label is
  held out exactly once.
* ``gears`` (for data with combinations ``A+B``): the genes perturbed alone are cut into
  ``folds`` groups the same way; fold ``k`` holds out its genes (their single labels and every
  combination that contains one of them), plus the ``k``-th group of the remaining combinations.
  Each held-out label belongs to a GEARS subgroup (:func:`assign_subgroups`): ``unseen_single``,
  ``combo_seen0``, ``combo_seen1``, ``combo_seen2`` (the number of member genes that were
  perturbed alone in training).

Context transfer (:func:`context_transfer`): on screens with several contexts (cell lines or
types), (perturbation, context) pairs are held out so that each held-out perturbation was
measured in the other contexts; PertTX predicts them from their own context's controls, beside
``train_mean`` (per context) and ``other_contexts_mean`` (the perturbation's mean effect in the
other contexts).

Data sets and gene graphs are looked up by name (:func:`load_graph`, :func:`load_graphs`) under
``$PERTX_DATA_DIR`` (:func:`pertx_scvi.datasets.find_data_file`).
"""

from ._cli import add_benchmark_arguments, run_benchmark
from ._contexts import CONTEXT_BASELINES, ContextTransferResult, context_folds, context_transfer
from ._run import BASELINE_NAMES, DEFAULTS, QUICK, benchmark
from ._sources import GRAPH_FILES, QUICK_SIMULATION, load_graph, load_graphs
from ._splits import SPLITS, SUBGROUPS, assign_subgroups, gears_splits, kfold_perturbations

__all__ = [
    "BASELINE_NAMES",
    "CONTEXT_BASELINES",
    "ContextTransferResult",
    "DEFAULTS",
    "GRAPH_FILES",
    "QUICK",
    "QUICK_SIMULATION",
    "SPLITS",
    "SUBGROUPS",
    "add_benchmark_arguments",
    "assign_subgroups",
    "benchmark",
    "context_folds",
    "context_transfer",
    "gears_splits",
    "kfold_perturbations",
    "load_graph",
    "load_graphs",
    "run_benchmark",
]
