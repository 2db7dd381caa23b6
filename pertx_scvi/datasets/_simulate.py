"""A seeded simulator of a CRISPR knockout screen driven by a known sparse gene-regulatory network."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import TARGET_SUM

CONTROL = "control"
SEP = "+"
_MAX_SPECTRAL_RADIUS = 0.7
_MIN_LOG_EFFECT, _MAX_LOG_EFFECT = -6.0, 2.5


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable ``log(sum(exp(x)))`` along ``axis`` (kept as a size-1 axis)."""
    m = x.max(axis=axis, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _build_network(
    rng: np.random.Generator,
    n_regulators: int,
    n_other: int,
    module_of: np.ndarray,
    targets_per_module: int,
    private_targets: int,
    n_cross_module_edges: int,
    weak: np.ndarray,
    effect_strength: float,
) -> np.ndarray:
    """Draw the signed adjacency matrix ``A`` (``A[s, t]`` is the weight of the edge s -> t).

    Nodes ``0 .. n_regulators-1`` are regulators, the rest are non-regulator genes (which have no
    outgoing edges).
    """
    n_all = n_regulators + n_other
    others = np.arange(n_regulators, n_all)
    adj = np.zeros((n_all, n_all))
    strength = np.where(
        weak, rng.uniform(0.05, 0.15, n_regulators), rng.uniform(0.6, 1.4, n_regulators)
    )
    n_modules = int(module_of.max()) + 1
    n_targets = min(targets_per_module, n_other)
    for m in range(n_modules):
        members = np.flatnonzero(module_of == m)
        # shared targets with module-specific signs and weights (mostly activating)
        targets = rng.choice(others, n_targets, replace=False)
        sign = np.where(rng.random(n_targets) < 0.3, -1.0, 1.0)
        w_module = sign * rng.uniform(0.3, 0.8, n_targets)
        jitter = rng.uniform(0.7, 1.3, (members.size, n_targets))
        keep = rng.random((members.size, n_targets)) < 0.8
        adj[np.ix_(members, targets)] = w_module * jitter * keep * effect_strength
        # regulators of a module form a positive feedback ring
        if members.size > 1:
            nxt = np.roll(members, -1)
            adj[members, nxt] = rng.uniform(0.2, 0.4, members.size)
    # a few private targets per regulator (make regulators of a module distinguishable)
    if private_targets > 0:
        n_priv = min(private_targets, n_other)
        priv = np.argsort(rng.random((n_regulators, n_other)), axis=1)[:, :n_priv] + n_regulators
        sign = np.where(rng.random(priv.shape) < 0.3, -1.0, 1.0)
        rows = np.repeat(np.arange(n_regulators), n_priv)
        adj[rows, priv.ravel()] = (
            sign * rng.uniform(0.3, 0.8, priv.shape)
        ).ravel() * effect_strength
    # a few edges between regulators of different modules
    if n_cross_module_edges > 0 and n_modules > 1:
        src, dst = np.nonzero(module_of[:, None] != module_of[None, :])
        pick = rng.choice(src.size, min(n_cross_module_edges, src.size), replace=False)
        sign = np.where(rng.random(pick.size) < 0.5, -1.0, 1.0)
        adj[src[pick], dst[pick]] = sign * rng.uniform(0.2, 0.4, pick.size)
    # scale each regulator's outgoing edges by its strength (weak regulators barely act)
    adj[:n_regulators] *= strength[:, None]
    # keep the regulator-regulator feedback well inside the convergence region
    rho = np.abs(np.linalg.eigvals(adj[:n_regulators, :n_regulators])).max(initial=0.0)
    if rho > _MAX_SPECTRAL_RADIUS:
        adj[:n_regulators, :n_regulators] *= _MAX_SPECTRAL_RADIUS / rho
    return adj


def _knockout_effect(
    adj: np.ndarray, n_regulators: int, genes: np.ndarray, knockdown: np.ndarray
) -> np.ndarray:
    """Log-mean shift of every node when ``genes`` are knocked out together (do-intervention).

    The knocked-out genes are clamped at ``-knockdown`` (their incoming edges are cut) and the change
    propagates linearly, ``d = A'^T d + u``, i.e. ``d = (I - A'^T)^{-1} u``. Only regulators have
    outgoing edges, so the system is solved on the regulator block and then pushed to the targets.
    """
    r = n_regulators
    cut = adj[:r].copy()  # only regulators have outgoing edges
    cut[:, genes] = 0.0
    u = np.zeros(adj.shape[0])
    u[genes] = -knockdown[genes]
    d_reg = np.linalg.solve(np.eye(r) - cut[:, :r].T, u[:r])
    d = u.copy()
    d[:r] = d_reg
    d[r:] += cut[:, r:].T @ d_reg
    return np.clip(d, _MIN_LOG_EFFECT, _MAX_LOG_EFFECT)


def _combine(
    singles: np.ndarray, idx: Sequence[int], interaction: np.ndarray, scale: float
) -> np.ndarray:
    """Sum of single effects plus ``scale * sum_{g<h} c_gh * (d_g * d_h)`` over member pairs.

    ``singles[k]`` is the effect of member ``idx[k]``; ``interaction`` holds ``c`` for regulator
    pairs (other pairs do not interact).
    """
    out = singles.sum(axis=0)
    n_int = interaction.shape[0]
    if scale != 0.0:
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                g, h = idx[a], idx[b]
                if g < n_int and h < n_int:
                    out = out + scale * interaction[g, h] * singles[a] * singles[b]
    return np.clip(out, _MIN_LOG_EFFECT, _MAX_LOG_EFFECT)


def simulate(
    n_genes: int = 200,
    n_regulators: int = 40,
    n_modules: int = 8,
    n_unmeasured_regulators: int = 0,
    n_control_cells: int = 600,
    n_cells_per_perturbation: int = 60,
    n_combinations: int = 10,
    n_cell_types: int = 1,
    n_batches: int = 1,
    targets_per_module: int = 15,
    private_targets: int = 2,
    n_cross_module_edges: int | None = None,
    weak_fraction: float = 0.2,
    knockdown_range: tuple[float, float] = (1.5, 2.5),
    effect_strength: float = 1.0,
    interaction_scale: float = 0.1,
    cell_type_scale: float = 1.0,
    cell_type_proportions: Sequence[float] | None = None,
    cell_type_effect_scale: Sequence[float] | None = None,
    batch_scale: float = 0.2,
    n_programs: int = 3,
    program_scale: float = 0.4,
    library_size: float = 1500.0,
    library_sd: float = 0.3,
    dispersion: float = 5.0,
    n_phenotype_genes: int = 5,
    phenotype_noise: float = 0.5,
    extra_labels: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Simulate a CRISPR knockout screen from a known sparse gene-regulatory network.

    **Network.** ``n_regulators`` perturbable genes (``REG00``, ``REG01``, ...) are split into
    ``n_modules`` contiguous modules. Each module regulates ``targets_per_module`` shared target
    genes with module-specific signed weights (about 30 % repressive; each regulator keeps about
    80 % of its module's edges with its own jitter), each regulator also has ``private_targets``
    targets of its own, the regulators of a module form a positive feedback ring, and
    ``n_cross_module_edges`` signed edges link regulators of different modules. Every regulator has
    a strength that scales its outgoing edges; a ``weak_fraction`` of the regulators is weak (about
    a tenth of a normal one), so their knockout changes little besides the target itself. The
    regulator-regulator block is rescaled to a spectral radius of at most 0.7.

    **Knockout effects.** Knocking out gene ``g`` clamps its log-mean at ``-k_g`` (``k_g`` drawn
    from ``knockdown_range``) and cuts its incoming edges; the change propagates linearly through
    the network: ``d = (I - A'^T)^{-1} u`` with ``u = -k_g e_g`` and ``A'`` the adjacency without
    edges into ``g``. Genes close in the network therefore have correlated knockout effects. A
    combination ``A+B`` has the log-space effect ``d_A + d_B + interaction_scale * c_AB * d_A * d_B``
    (element-wise product; ``c_AB ~ N(0, 1)`` drawn once per regulator pair). Log effects are
    clipped to [-6, 2.5].

    **Expression.** Gene ``j`` of a cell of type ``t``, batch ``b`` and perturbation ``p`` has the
    log-mean ``eta = base_j + D_tj + s_t d_pj + B_bj``: a shared baseline (regulators slightly
    higher), a cell-type profile ``D_t`` (``N(0, cell_type_scale)`` on a random 30 % of the genes,
    one per type), the perturbation effect ``d_p`` scaled by ``s_t`` (``cell_type_effect_scale``)
    and a batch shift ``B_b`` (``N(0, batch_scale)`` per gene, only when ``n_batches > 1``). The
    expected counts are ``L_c * softmax(eta)_j * exp(z_c w_j - |w_j|^2 / 2)``: per-cell library
    sizes ``L_c`` (log-normal, mean ``library_size``, log-sd ``library_sd``, times a per-batch
    factor) and ``n_programs`` continuous per-cell programs ``z_c ~ N(0, I)`` with loadings ``w``
    (``N(0, program_scale)`` on a random 20 % of the genes; the ``-|w_j|^2/2`` keeps the expected
    profile at ``softmax(eta)``). Counts are negative binomial (gamma-Poisson) with a per-gene
    inverse dispersion ``theta_j = dispersion * exp(N(0, 0.5))``.

    **Phenotype.** ``obs["phenotype"]`` is a fixed linear function of the cell's latent log-mean
    expression ``l_cj = log(1e4 * expected normalised expression)`` of ``n_phenotype_genes``
    module-target genes, ``sum_k w_k (l_ck - l_ref,k)`` (weights ``+-U(0.5, 1.5)``, reference the
    population control profile), plus Gaussian noise with sd ``phenotype_noise`` times the sd of
    the noiseless score (stored in ``obs["phenotype_noiseless"]``); the default 0.5 gives a
    Pearson correlation of about 0.89 between the two.

    Parameters
    ----------
    n_genes
        Number of measured genes (``var_names``), including the measured regulators.
    n_regulators
        Number of perturbable regulators (all of them are knocked out, one at a time).
    n_modules
        Number of regulator modules (regulators of a module share targets and are linked).
    n_unmeasured_regulators
        That many regulators (chosen at random) are perturbed but not among ``var_names``, as in
        real screens whose target genes are not measured.
    n_control_cells
        Number of control cells (label ``"control"``).
    n_cells_per_perturbation
        Number of cells of every single knockout and every combination.
    n_combinations
        Number of two-regulator combinations ``"A+B"`` (drawn at random among all pairs).
    n_cell_types
        Number of cell types (``obs["cell_type"]``: ``"type_0"``, ...).
    n_batches
        Number of batches (``obs["batch"]``: ``"batch_0"``, ...); cells are assigned at random.
    targets_per_module
        Number of shared target genes of each module.
    private_targets
        Number of own target genes of each regulator.
    n_cross_module_edges
        Number of regulator-regulator edges between modules; ``None`` uses ``n_modules``.
    weak_fraction
        Fraction of regulators whose knockout has weak downstream effects.
    knockdown_range
        Range of the log-mean drop of a knocked-out gene itself (natural log).
    effect_strength
        Multiplier of all regulator -> target weights (not of regulator-regulator edges).
    interaction_scale
        Scale of the non-additive term of combinations (0 for purely additive combinations).
    cell_type_scale
        Standard deviation of the cell-type-specific baseline shifts.
    cell_type_proportions
        Probabilities of the cell types (``None``: equal).
    cell_type_effect_scale
        Per-cell-type multiplier of the perturbation effects (``None``: all 1).
    batch_scale
        Standard deviation of the per-gene batch shifts and of the per-batch log library factor.
    n_programs
        Number of continuous per-cell expression programs (cell-to-cell heterogeneity).
    program_scale
        Standard deviation of the program loadings.
    library_size
        Mean total UMI count per cell.
    library_sd
        Standard deviation of the log library size.
    dispersion
        Median negative-binomial inverse dispersion ``theta`` (variance ``mu + mu^2 / theta``).
    n_phenotype_genes
        Number of genes that the phenotype score reads.
    phenotype_noise
        Noise sd of the phenotype relative to the sd of its noiseless version.
    extra_labels
        Further perturbation labels (e.g. combinations that were not simulated, ``"REG01+REG07"``,
        or triples) whose true effects are appended to ``true_effects``. Members may be any gene of
        the network (a non-regulator only lowers itself); only regulator pairs interact. Does not
        change the simulated cells.
    seed
        Seed of the random generator; the output is a deterministic function of the arguments.

    Returns
    -------
    adata
        Integer counts in ``X`` (float32 CSR), no layers. ``obs``: ``perturbation`` (categorical,
        ``"control"`` first, combinations as ``"A+B"``), ``cell_type``, ``batch`` (categoricals),
        ``phenotype`` and ``phenotype_noiseless``. ``var``: ``is_regulator``, ``module`` (-1 for
        non-regulators). ``uns["simulation"]``: ``params``, ``control_label``, ``regulators``,
        ``regulator_module``, ``unmeasured_regulators``, ``weak_regulators``, ``self_knockdown``,
        ``combinations``, ``phenotype_genes``, ``phenotype_weights``, ``cell_type_effect_scale``
        and ``log_fold_change`` (DataFrame, perturbations x ``var_names``: the natural-log shift
        ``d_p`` of the latent mean, before cell-type scaling and normalisation).
    true_effects
        DataFrame, index every non-control perturbation label (singles, combinations, then
        ``extra_labels``), columns ``var_names``: the true change in log1p(normalize_total 1e4)
        space, ``log1p(1e4 mu_p / sum(mu_p)) - log1p(1e4 mu_c / sum(mu_c))`` with ``mu`` the
        expected expression profile averaged over cell types and batches, weighted by their cell
        counts in the whole data set.
    network
        DataFrame with columns ``source``, ``target``, ``weight`` (signed): regulator -> target and
        regulator -> regulator edges over gene names, including unmeasured regulators.

    Examples
    --------
    >>> adata, true_effects, network = simulate(seed=0)
    >>> adata.obs["perturbation"].cat.categories[:3].tolist()
    ['control', 'REG00', 'REG01']
    """
    # ---- checks ------------------------------------------------------------------------------
    if n_regulators < 1 or n_modules < 1 or n_modules > n_regulators:
        raise ValueError("need 1 <= n_modules <= n_regulators")
    if not 0 <= n_unmeasured_regulators <= n_regulators:
        raise ValueError("n_unmeasured_regulators must lie in [0, n_regulators]")
    n_measured_reg = n_regulators - n_unmeasured_regulators
    n_other = n_genes - n_measured_reg
    if n_other < 1:
        raise ValueError(
            f"n_genes={n_genes} leaves no room for target genes besides {n_measured_reg} "
            "measured regulators"
        )
    max_pairs = n_regulators * (n_regulators - 1) // 2
    if not 0 <= n_combinations <= max_pairs:
        raise ValueError(f"n_combinations must lie in [0, {max_pairs}]")
    if n_cell_types < 1 or n_batches < 1:
        raise ValueError("n_cell_types and n_batches must be >= 1")
    lo, hi = knockdown_range
    if not 0 <= lo <= hi:
        raise ValueError("knockdown_range must be (low, high) with 0 <= low <= high")
    if cell_type_proportions is None:
        type_p = np.full(n_cell_types, 1.0 / n_cell_types)
    else:
        type_p = np.asarray(cell_type_proportions, dtype=float)
        if type_p.shape != (n_cell_types,) or (type_p < 0).any() or type_p.sum() <= 0:
            raise ValueError("cell_type_proportions needs n_cell_types non-negative values")
        type_p = type_p / type_p.sum()
    if cell_type_effect_scale is None:
        type_scale = np.ones(n_cell_types)
    else:
        type_scale = np.asarray(cell_type_effect_scale, dtype=float)
        if type_scale.shape != (n_cell_types,):
            raise ValueError("cell_type_effect_scale needs one value per cell type")
    if n_cross_module_edges is None:
        n_cross_module_edges = n_modules

    rng = np.random.default_rng(seed)

    # ---- genes and network -------------------------------------------------------------------
    reg_width = max(2, len(str(n_regulators - 1)))
    gene_width = max(3, len(str(n_other - 1)))
    regulators = np.array([f"REG{i:0{reg_width}d}" for i in range(n_regulators)])
    other_names = np.array([f"GENE{i:0{gene_width}d}" for i in range(n_other)])
    all_names = np.concatenate([regulators, other_names])
    n_all = all_names.size
    module_of = np.repeat(
        np.arange(n_modules), [a.size for a in np.array_split(np.arange(n_regulators), n_modules)]
    )
    unmeasured = np.sort(rng.choice(n_regulators, n_unmeasured_regulators, replace=False))
    measured = np.setdiff1d(np.arange(n_all), unmeasured)  # regulators first, then others
    n_weak = int(round(weak_fraction * n_regulators))
    weak = np.zeros(n_regulators, dtype=bool)
    weak[rng.choice(n_regulators, n_weak, replace=False)] = True
    adj = _build_network(
        rng,
        n_regulators,
        n_other,
        module_of,
        targets_per_module,
        private_targets,
        n_cross_module_edges,
        weak,
        effect_strength,
    )
    knockdown = rng.uniform(lo, hi, n_all)
    interaction = rng.standard_normal((n_regulators, n_regulators))
    interaction = np.triu(interaction, 1) + np.triu(interaction, 1).T

    # ---- perturbations -----------------------------------------------------------------------
    singles = np.stack(
        [_knockout_effect(adj, n_regulators, np.array([g]), knockdown) for g in range(n_regulators)]
    )  # (n_regulators, n_all)
    iu, ju = np.triu_indices(n_regulators, 1)
    pick = np.sort(rng.choice(iu.size, n_combinations, replace=False))
    combos = list(zip(iu[pick].tolist(), ju[pick].tolist(), strict=True))
    labels = list(regulators) + [f"{regulators[a]}{SEP}{regulators[b]}" for a, b in combos]
    effects = np.concatenate(
        [singles]
        + [_combine(singles[list(c)], c, interaction, interaction_scale)[None] for c in combos]
    )  # (n_perturbations, n_all): log-mean shifts, perturbation order as `labels`
    effects_meas = effects[:, measured]
    n_meas = measured.size
    n_pert = len(labels)

    # ---- baselines ---------------------------------------------------------------------------
    base = rng.normal(0.0, 1.0, n_all)
    base[:n_regulators] = rng.normal(1.0, 0.4, n_regulators)
    base = base[measured]
    type_mask = rng.random((n_cell_types, n_meas)) < 0.3
    type_shift = rng.normal(0.0, cell_type_scale, (n_cell_types, n_meas)) * type_mask
    if n_batches > 1:
        batch_shift = rng.normal(0.0, batch_scale, (n_batches, n_meas))
        batch_lib = np.exp(rng.normal(0.0, batch_scale, n_batches))
    else:
        batch_shift = np.zeros((1, n_meas))
        batch_lib = np.ones(1)
    prog_mask = rng.random((n_programs, n_meas)) < 0.2
    loadings = rng.normal(0.0, program_scale, (n_programs, n_meas)) * prog_mask
    theta = dispersion * np.exp(rng.normal(0.0, 0.5, n_meas))

    # ---- cells -------------------------------------------------------------------------------
    counts_per_group = np.array([n_control_cells] + [n_cells_per_perturbation] * n_pert)
    pert_of_cell = rng.permutation(np.repeat(np.arange(-1, n_pert), counts_per_group))
    n_cells = pert_of_cell.size
    type_of_cell = rng.choice(n_cell_types, n_cells, p=type_p)
    batch_of_cell = rng.integers(0, n_batches, n_cells)
    z = rng.standard_normal((n_cells, n_programs))
    lib = library_size * np.exp(rng.normal(-0.5 * library_sd**2, library_sd, n_cells))
    lib *= batch_lib[batch_of_cell]

    effects_ctrl = np.vstack([effects_meas, np.zeros((1, n_meas))])  # row -1 is control
    eta = (
        base
        + type_shift[type_of_cell]
        + type_scale[type_of_cell, None] * effects_ctrl[pert_of_cell]
        + batch_shift[batch_of_cell]
    )
    log_prop = eta - _logsumexp(eta, axis=1)
    log_prop += z @ loadings - 0.5 * (loadings**2).sum(axis=0)
    mean = lib[:, None] * np.exp(log_prop)
    counts = rng.poisson(rng.gamma(theta, mean / theta))
    x = sp.csr_matrix(counts.astype(np.float32))

    # ---- expected profiles and true effects --------------------------------------------------
    tb = np.bincount(type_of_cell * n_batches + batch_of_cell, minlength=n_cell_types * n_batches)
    weights = (tb / tb.sum()).reshape(n_cell_types, n_batches)

    def expected_log1p(delta: np.ndarray) -> np.ndarray:
        """log1p(1e4 * mu / sum(mu)) of the population mixture, for effects ``delta`` (P, G)."""
        e = (
            base
            + type_shift[None, :, None, :]
            + type_scale[None, :, None, None] * delta[:, None, None, :]
            + batch_shift[None, None, :, :]
        )  # (P, T, B, G)
        prop = np.exp(e - _logsumexp(e, axis=-1))
        mu = np.einsum("ptbg,tb->pg", prop, weights)
        return np.log1p(TARGET_SUM * mu / mu.sum(axis=1, keepdims=True))

    ctrl_log1p = expected_log1p(np.zeros((1, n_meas)))[0]
    true_labels = list(labels)
    true_delta = effects_meas
    if extra_labels:
        index = {name: i for i, name in enumerate(all_names)}
        extra_rows, extra_names = [], []

        def single(g: int) -> np.ndarray:
            if g < n_regulators:
                return singles[g]
            d = np.zeros(n_all)  # a non-regulator has no outgoing edges: only itself drops
            d[g] = -knockdown[g]
            return d

        for label in extra_labels:
            if label in true_labels or label in extra_names:
                continue
            genes = label.split(SEP)
            if (
                label == CONTROL
                or any(g not in index for g in genes)
                or len(set(genes)) != len(genes)
            ):
                raise ValueError(
                    f"extra label {label!r}: members must be distinct network genes joined by "
                    f"{SEP!r} (not {CONTROL!r})"
                )
            idx = [index[g] for g in genes]
            members = np.stack([single(g) for g in idx])
            extra_rows.append(_combine(members, idx, interaction, interaction_scale)[measured])
            extra_names.append(label)
        if extra_rows:
            true_labels += extra_names
            true_delta = np.vstack([effects_meas, np.stack(extra_rows)])
    true_effects = pd.DataFrame(
        expected_log1p(true_delta) - ctrl_log1p,
        index=pd.Index(true_labels, name="perturbation"),
        columns=pd.Index(all_names[measured]),
    )

    # ---- phenotype ---------------------------------------------------------------------------
    target_cols = np.flatnonzero(
        (np.abs(adj[:n_regulators, measured]) > 0).any(axis=0) & (measured >= n_regulators)
    )
    if target_cols.size == 0:
        target_cols = np.arange(n_meas)
    n_ph = min(n_phenotype_genes, target_cols.size)
    ph_cols = np.sort(rng.choice(target_cols, n_ph, replace=False))
    ph_w = np.where(rng.random(n_ph) < 0.5, -1.0, 1.0) * rng.uniform(0.5, 1.5, n_ph)
    latent = np.log(TARGET_SUM) + log_prop[:, ph_cols]
    ref = np.log(np.expm1(ctrl_log1p[ph_cols]))  # log(1e4 * mu_control)
    phen_clean = (latent - ref) @ ph_w
    noise_sd = phenotype_noise * phen_clean.std()
    phen = phen_clean + rng.normal(0.0, 1.0, n_cells) * noise_sd

    # ---- assemble ----------------------------------------------------------------------------
    var_names = all_names[measured]
    pert_names = np.array([CONTROL] + labels)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(pert_names[pert_of_cell + 1], categories=pert_names),
            "cell_type": pd.Categorical.from_codes(
                type_of_cell, [f"type_{t}" for t in range(n_cell_types)]
            ),
            "batch": pd.Categorical.from_codes(
                batch_of_cell, [f"batch_{b}" for b in range(n_batches)]
            ),
            "phenotype": phen.astype(np.float32),
            "phenotype_noiseless": phen_clean.astype(np.float32),
        },
        index=pd.Index([f"cell_{i:0{len(str(n_cells - 1))}d}" for i in range(n_cells)]),
    )
    module_full = np.full(n_all, -1)
    module_full[:n_regulators] = module_of
    var = pd.DataFrame(
        {"is_regulator": measured < n_regulators, "module": module_full[measured]},
        index=pd.Index(var_names),
    )
    params = {
        "n_genes": n_genes,
        "n_regulators": n_regulators,
        "n_modules": n_modules,
        "n_unmeasured_regulators": n_unmeasured_regulators,
        "n_control_cells": n_control_cells,
        "n_cells_per_perturbation": n_cells_per_perturbation,
        "n_combinations": n_combinations,
        "n_cell_types": n_cell_types,
        "n_batches": n_batches,
        "targets_per_module": targets_per_module,
        "private_targets": private_targets,
        "n_cross_module_edges": n_cross_module_edges,
        "weak_fraction": weak_fraction,
        "knockdown_range": np.asarray(knockdown_range, dtype=float),
        "effect_strength": effect_strength,
        "interaction_scale": interaction_scale,
        "cell_type_scale": cell_type_scale,
        "cell_type_proportions": type_p,
        "cell_type_effect_scale": type_scale,
        "batch_scale": batch_scale,
        "n_programs": n_programs,
        "program_scale": program_scale,
        "library_size": library_size,
        "library_sd": library_sd,
        "dispersion": dispersion,
        "n_phenotype_genes": n_phenotype_genes,
        "phenotype_noise": phenotype_noise,
        "seed": seed,
    }
    uns = {
        "params": params,
        "control_label": CONTROL,
        "regulators": regulators.astype(str),
        "regulator_module": module_of,
        "unmeasured_regulators": regulators[unmeasured].astype(str),
        "weak_regulators": regulators[weak].astype(str),
        "self_knockdown": knockdown[:n_regulators],
        "combinations": np.array(labels[n_regulators:], dtype=str),
        "phenotype_genes": var_names[ph_cols].astype(str),
        "phenotype_weights": ph_w,
        "cell_type_effect_scale": type_scale,
        "log_fold_change": pd.DataFrame(
            effects_meas, index=pd.Index(labels), columns=pd.Index(var_names)
        ),
    }
    adata = ad.AnnData(X=x, obs=obs, var=var, uns={"simulation": uns})

    src, dst = np.nonzero(adj)
    network = pd.DataFrame(
        {"source": all_names[src], "target": all_names[dst], "weight": adj[src, dst]}
    )
    return adata, true_effects, network
