"""Train and predict with the upstream pertTF (PyPI ``perttf`` 0.1.1) and print its speed as JSON.

Run by ``benchmarks/speed.py`` with the python of a separate virtual environment that holds
``perttf==0.1.1``, ``wandb<0.29`` and ``omegaconf`` (see speed.py's docstring for the recipe);
it never imports ``pertx_scvi``. It can also be run by hand::

    WANDB_MODE=disabled /work/perttf-venv/bin/python benchmarks/_perttf_driver.py \\
        --h5ad /work/shared/data/perturb/papalexi2021_thp1_subset.h5ad --cells 4096 --threads 2

What it does, as pertTF's own code does it:

- cells: the same random subset as speed.py's PertTX rows (``default_rng(seed).choice`` of
  ``--cells`` cells, sorted); ``obs["genotype"]`` is the perturbation with the controls named
  ``WT`` (pertTF's control label), one ``celltype``.
- values: pertTF's ``Preprocessor`` (normalise to 1e4, log1p, 51 per-cell bins: the scGPT recipe
  of pertTF's ``demos/run_on_hpc`` script) into ``layers["X_binned"]``.
- configuration: ``generate_config`` (wandb disabled) with the tutorials' settings for
  perturbation prediction (``next_cell_pred_type="pert"``: each control is paired with a random
  cell of a random genotype; MVC/GEPC decoder, explicit zero probabilities, elastic cell
  similarity 0.7, cell-type and genotype classifiers, dropout 0.4), at the size given on the
  command line (default: d_model 64, 2 layers, 4 heads, 64 hidden units, batch 64) and every
  gene as a token (``n_hvg`` = number of genes, so ``max_seq_len`` = genes + <cls>).
- model: ``PerturbationTFModel`` built as in the tutorials.
- data: ``PertTFUniDataManager`` builds the dataset and the collator (tokenising, padding and
  masking per batch); the DataLoader is rebuilt around them with ``--workers`` workers (pertTF
  hard-codes 8, which on a 2-core machine compete with the training threads) and without
  pinned memory (no GPU).
- training: ``perttf.model.train_function.train``, the one-epoch loop that ``wrapper_train``
  calls, with the optimiser of ``create_optimizer_dict`` (Adam, lr 1e-3). ``wrapper_train``'s
  per-epoch validation pass, checkpoint saving and UMAP workers are left out: speed.py's PertTX
  rows train without validation too.
- prediction: ``eval_testdata(..., predict_expr=True, mvc_full_expr=True)`` (pertTF's inference
  path, as in its 50-gene tutorial) on the first ``--predict-controls`` controls of the subset
  paired with each of the first ``--predict-perturbations`` perturbations (``obs["genotype_next"]``),
  the same source cells and labels as speed.py's ``predict_perturbation`` call; the predicted
  profiles are ``obsm["mvc_next_expr"]``.

Step times: a wrapper around the DataLoader records when each batch is asked for and handed
over, so a step is the time from one batch's hand-over to the next (the model's forward,
backward, optimiser step and logging, plus fetching and collating the next batch: with 0
workers that runs on the training thread). The median over the steps after the first
``--skip-steps`` is reported, with the compute part alone (hand-over to the next request).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from importlib.metadata import version

# wandb is imported by perttf at import time; keep it offline and silent.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")


def log(message: str) -> None:
    """Progress on stderr: stdout carries the JSON result."""
    print(f"[perttf driver] {message}", file=sys.stderr, flush=True)


class TimedLoader:
    """Iterate a DataLoader, recording when each batch is requested and handed over."""

    def __init__(self, loader, max_steps: int | None = None):
        self.loader = loader
        self.max_steps = max_steps
        self.requested: list[float] = []
        self.handed: list[float] = []
        self.dataset = loader.dataset

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_steps is None else min(n, self.max_steps)

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(len(self)):
            self.requested.append(time.perf_counter())
            try:
                batch = next(iterator)
            except StopIteration:
                self.requested.pop()
                return
            self.handed.append(time.perf_counter())
            yield batch
        # the last step's end: the loop asks for one more batch after it
        self.requested.append(time.perf_counter())

    def step_seconds(self, skip: int) -> tuple[list[float], list[float]]:
        """(full steps, compute only) of every step after the first ``skip``."""
        n = len(self.handed)
        full = [self.handed[i + 1] - self.handed[i] for i in range(n - 1)]
        compute = [self.requested[i + 1] - self.handed[i] for i in range(n)]
        return full[skip:] or full, compute[skip:] or compute


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h5ad", required=True, help="Papalexi 2021 h5ad (raw counts in X)")
    parser.add_argument("--cells", type=int, default=4096, help="cells in the training subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and the model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--d-model", type=int, default=64, help="pertTF layer_size")
    parser.add_argument("--n-layers", type=int, default=2, help="transformer layers")
    parser.add_argument("--n-heads", type=int, default=4, help="attention heads")
    parser.add_argument("--d-hidden", type=int, default=64, help="feed-forward width (d_hid)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--dropout", type=float, default=0.4, help="pertTF tutorials: 0.4")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (pertTF hard-codes 8)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop the epoch after this many steps"
    )
    parser.add_argument(
        "--skip-steps", type=int, default=2, help="first steps left out of the median"
    )
    parser.add_argument("--predict-controls", type=int, default=1000, help="source cells")
    parser.add_argument("--predict-perturbations", type=int, default=2, help="labels to predict")
    parser.add_argument("--no-predict", action="store_true", help="skip the prediction timing")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    return parser.parse_args()


def load_subset(path: str, n_cells: int, seed: int):
    """The cells speed.py's PertTX rows train on, with pertTF's obs columns."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, min(n_cells, adata.n_obs), replace=False))
    adata = adata[keep].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    labels = adata.obs["perturbation"].astype(str)
    adata.obs["perturbation"] = labels
    adata.obs["genotype"] = labels.where(labels != "control", "WT")
    adata.obs["celltype"] = "THP-1"
    return adata


def preprocess(adata, n_bins: int = 51) -> None:
    from perttf.utils.preprocessor import Preprocessor

    adata.layers["GPTin"] = adata.X.copy()
    Preprocessor(
        use_key="GPTin",
        normalize_total=1e4,
        log1p=True,
        binning=n_bins,
        result_binned_key="X_binned",
    )(adata, batch_key=None)


def make_config(args, n_genes: int):
    from perttf.model.config_gen import generate_config

    parameters = dict(
        seed=args.seed,
        dataset_name="papalexi2021_speed",
        do_train=True,
        load_model=None,
        GEPC=True,
        ecs_thres=0.7,
        ecs_weight=1.0,
        dab_weight=0.0,
        this_weight=1.0,
        next_weight=1.0,
        n_rounds=1,
        next_cell_pred_type="pert",
        cell_type_classifier=True,
        cell_type_classifier_weight=1.0,
        genotype_classifier=True,
        perturbation_classifier_weight=1.0,
        ps_weight=0.0,
        perturbation_input=False,
        CCE=False,
        mask_ratio=0.15,
        epochs=1,
        n_bins=51,
        lr=1e-3,
        batch_size=args.batch_size,
        layer_size=args.d_model,
        nlayers=args.n_layers,
        nhead=args.n_heads,
        d_hid=args.d_hidden,
        dropout=args.dropout,
        schedule_ratio=0.99,
        save_eval_interval=5,
        log_interval=100,
        fast_transformer=False,  # CPU: pertTF falls back to nn.TransformerEncoder anyway
        pre_norm=False,
        amp=False,  # CPU: torch.cuda.amp is a no-op that only warns
        do_sample_in_train=False,
        ADV=False,
        adv_weight=10000,
        adv_E_delay_epochs=2,
        adv_D_delay_epochs=2,
        lr_ADV=1e-3,
        DSBN=False,
        per_seq_batch_sample=False,
        use_batch_label=False,
        schedule_interval=1,
        explicit_zero_prob=True,
        n_hvg=n_genes,  # every gene a token: max_seq_len = genes + <cls>
        mask_value=-1,
        pad_value=-2,
        pad_token="<pad>",
        cls_token="<cls>",
        sampling_mode="simple",
        mvc_masked_train=True,
        distribution=None,
        use_ot=False,
    )
    config, _ = generate_config(parameters, wandb_mode="disabled")
    return config


def build_model(config, data_gen):
    from perttf.model.pertTF import PerturbationTFModel

    vocab = data_gen["vocab"]
    return PerturbationTFModel(
        data_gen["num_genotypes"],
        3,  # perturbation decoder layers, as in the tutorials
        len(data_gen["ps_names"]),
        len(vocab),
        config.layer_size,
        config.nhead,
        config.d_hid,
        config.nlayers,
        vocab=vocab,
        dropout=config.dropout,
        pad_token=config.pad_token,
        pad_value=config.pad_value,
        do_mvc=config.GEPC,
        do_dab=config.dab_weight > 0,
        use_batch_labels=config.use_batch_label,
        num_batch_labels=data_gen["num_batch_types"],
        domain_spec_batchnorm=config.DSBN,
        n_input_bins=config.n_bins,
        ecs_threshold=config.ecs_thres,
        explicit_zero_prob=config.explicit_zero_prob,
        use_fast_transformer=config.fast_transformer,
        pre_norm=config.pre_norm,
        n_cls=data_gen["num_cell_types"],
        nlayers_cls=3,
    )


def prediction_input(adata, n_controls: int, n_perturbations: int):
    """Controls x perturbations, pertTF-style: the label to predict in ``obs["genotype_next"]``."""
    import anndata as ad

    controls = adata[adata.obs["genotype"] == "WT"][:n_controls]
    labels = [p for p in adata.obs["perturbation"].unique() if p != "control"][:n_perturbations]
    parts = []
    for label in labels:
        part = controls.copy()
        part.obs["genotype_next"] = label
        part.obs_names = [f"{name}-{label}" for name in controls.obs_names]
        parts.append(part)
    return ad.concat(parts), labels


def main() -> None:
    args = parse_args()
    # pertTF calls torch.cuda.amp once per step: a deprecation notice per step fills the log
    warnings.filterwarnings("ignore", category=FutureWarning)
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    log(f"torch {torch.__version__}, {threads} threads; reading {args.h5ad}")
    from perttf.model.train_function import eval_testdata, train
    from perttf.utils.logger import create_logger
    from perttf.utils.pert_data_loader import PertTFUniDataManager
    from perttf.utils.set_optimizer import create_optimizer_dict
    from torch.utils.data import DataLoader

    adata = load_subset(args.h5ad, args.cells, args.seed)
    preprocess(adata)
    config = make_config(args, adata.n_vars)
    # scanpy's numba kernels reset the OpenMP pool torch shares
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    logger = create_logger()

    started = time.perf_counter()
    manager = PertTFUniDataManager(adata, config, expr_layer="X_binned")
    dataset = manager._create_dataset_from_indices(np.arange(adata.n_obs))
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=manager.collator,
        pin_memory=False,
    )
    data_gen = manager.get_adata_info_dict()
    data_gen["n_perturb"], data_gen["n_cls"] = data_gen["num_genotypes"], data_gen["num_cell_types"]
    setup_seconds = time.perf_counter() - started

    torch.manual_seed(args.seed)
    model = build_model(config, data_gen).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    optim_dict = create_optimizer_dict(model, device, config, data_gen["num_batch_types"])
    timed = TimedLoader(loader, args.max_steps)
    log(
        f"training: {len(timed)} steps of {config.batch_size} cells, "
        f"{adata.n_vars} genes (+<cls>) as tokens, {n_parameters:,} parameters"
    )
    started = time.perf_counter()
    train(
        model, timed, config, data_gen["vocab"], optim_dict, epoch=1, logger=logger, device=device
    )
    train_seconds = time.perf_counter() - started
    full, compute = timed.step_seconds(args.skip_steps)
    trained_cells = min(len(timed) * config.batch_size, len(dataset))
    result = {
        "perttf_version": version("perttf"),
        "torch": torch.__version__,
        "threads": threads,
        "workers": args.workers,
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "tokens": int(config.max_seq_len),
        "parameters": int(n_parameters),
        "steps": len(timed.handed),
        "step_median_s": float(np.median(full)),
        "step_compute_median_s": float(np.median(compute)),
        "train_cells_per_s": config.batch_size / float(np.median(full)),
        "train_cells_per_s_compute": config.batch_size / float(np.median(compute)),
        "train_seconds": train_seconds,
        "train_cells_per_s_end_to_end": trained_cells / (train_seconds + setup_seconds),
    }
    log(f"trained at {result['train_cells_per_s']:.1f} cells/s (median step)")

    if not args.no_predict:
        query, labels = prediction_input(adata, args.predict_controls, args.predict_perturbations)
        torch.set_num_threads(threads)
        log(f"predicting {query.n_obs} cells ({len(labels)} perturbations)")
        started = time.perf_counter()
        predicted = eval_testdata(
            model,
            adata_t=query,
            gene_ids=data_gen["gene_ids"],
            train_data_dict=data_gen,
            config=config,
            include_types=["cls"],
            logger=logger,
            predict_expr=True,
            mvc_full_expr=True,
        )
        predict_seconds = time.perf_counter() - started
        assert predicted.obsm["mvc_next_expr"].shape == (query.n_obs, adata.n_vars)
        result["predicted_cells"] = int(query.n_obs)
        result["predict_seconds"] = predict_seconds
        result["predict_cells_per_s"] = query.n_obs / predict_seconds
        log(f"predicted at {result['predict_cells_per_s']:.1f} cells/s")

    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
