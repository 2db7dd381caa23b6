"""Evaluation of perturbation predictions: metrics, baselines and method comparison.

All quantities live in log1p(normalize_total 1e4) expression space. Typical use (held-out perturbations ``held``; controls split so that the methods and the
observed Δ do not share control noise)::

    from pertx_scvi import metrics as pm

    labels = adata.obs["perturbation"].to_numpy()
    is_ctrl, is_held = labels == "control", np.isin(labels, held)
    fit_mask, eval_mask = pm.split_control(adata, "perturbation", "control")
    adata_train = adata[(~is_ctrl & ~is_held) | fit_mask]
    sel = is_held | is_ctrl
    baselines = pm.fit_baselines(adata_train, "perturbation", "control", edges=go_edges)
    df = pm.compare(
        {"PertTX": pred_df, **baselines}, adata[sel], "perturbation", "control",
        control_mask=eval_mask[sel], pred_control_mask=fit_mask[sel],
        train_mean=pm.perturbed_mean_profile(adata_train, "perturbation", "control"),
    )
    pm.summarize(df, by_strong_effect=True)

Predictions and held-out cells can also be scored by cell-eval (optional extra ``celleval``):
:func:`to_cell_eval` writes the AnnData pair it reads, :func:`score_with_cell_eval` runs it.

Nothing in this subpackage imports torch.
"""

from ._baselines import (
    BASELINE_NAMES,
    Additive,
    Baseline,
    ControlMean,
    GraphNeighbourAverage,
    KnockdownPrior,
    Linear,
    TrainingProfiles,
    TrainMean,
    fit_baselines,
    go_gene_embedding,
    training_profiles,
)
from ._ceiling import SplitHalfCeiling
from ._cell_eval import CellEvalScores, require_cell_eval, score_with_cell_eval, to_cell_eval
from ._heldout import (
    CONTEXT_BASELINES,
    context_labels,
    context_pairs,
    control_masks,
    evaluate_heldout,
    other_contexts_mean,
    pooled_discrimination,
)
from ._metrics import (
    benjamini_hochberg,
    de_gene_overlap,
    direction_match,
    discrimination_chance,
    discrimination_score,
    mae,
    mse,
    pearson,
    pearson_rows,
    perturbed_mean_profile,
    split_control,
    split_half_correlation,
    top_genes,
    welch_ttest,
)
from ._summary import (
    compare,
    lower_is_better,
    metric_names,
    paired_differences,
    summarize,
    target_gene_positions,
)
from ._utils import canonical_label, is_log_normalized, log_normalize, parse_perturbation
from ._vcc import vcc_scores

__all__ = [
    # labels and normalisation
    "parse_perturbation",
    "canonical_label",
    "is_log_normalized",
    "log_normalize",
    # metrics
    "pearson",
    "pearson_rows",
    "mse",
    "mae",
    "direction_match",
    "discrimination_score",
    "discrimination_chance",
    "pooled_discrimination",
    "de_gene_overlap",
    "top_genes",
    "welch_ttest",
    "benjamini_hochberg",
    # traps
    "split_control",
    "split_half_correlation",
    "perturbed_mean_profile",
    # comparison and the held-out protocol
    "compare",
    "summarize",
    "paired_differences",
    "lower_is_better",
    "metric_names",
    "target_gene_positions",
    "CONTEXT_BASELINES",
    "context_labels",
    "context_pairs",
    "control_masks",
    "other_contexts_mean",
    "evaluate_heldout",
    # baselines
    "Baseline",
    "ControlMean",
    "TrainMean",
    "Additive",
    "Linear",
    "GraphNeighbourAverage",
    "KnockdownPrior",
    "SplitHalfCeiling",
    "vcc_scores",
    "TrainingProfiles",
    "training_profiles",
    "BASELINE_NAMES",
    "fit_baselines",
    "go_gene_embedding",
    # cell-eval interoperability (the optional extra celleval)
    "to_cell_eval",
    "score_with_cell_eval",
    "require_cell_eval",
    "CellEvalScores",
]
