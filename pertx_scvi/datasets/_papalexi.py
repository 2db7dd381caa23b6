"""Loaders for the real perturbation data sets (read from a local data folder)."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._paths import find_data_file

PAPALEXI_FILE = "perturb/papalexi2021_thp1_subset.h5ad"
NORMAN_FIXTURE_FILE = "perturb/norman2019_fixture_50x50.h5ad"
CONTROL = "control"


def _control_first(labels: pd.Series, control: str = CONTROL) -> pd.Categorical:
    """Return ``labels`` as a categorical whose first category is ``control``."""
    cat = pd.Categorical(labels.astype(str))
    cats = [control] + sorted(c for c in cat.categories if c != control)
    return pd.Categorical(labels.astype(str), categories=cats)


def _as_csr_float32(x) -> sp.csr_matrix:
    """Return ``x`` as a float32 CSR matrix."""
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    return x.astype(np.float32)


def papalexi2021(path: str | os.PathLike | None = None) -> ad.AnnData:
    """Load the Papalexi et al. 2021 THP-1 CRISPR knockout screen (gene-downsampled subset).

    ECCITE-seq CRISPR knockout screen in IFN-gamma stimulated THP-1 cells (Papalexi et al. 2021,
    Nat Genet; GEO GSE153056), as the 20,729 cells x 299 genes subset distributed in the
    sceptredata R package (MIT). 25 knockout targets (only 9 of them among the measured genes) and
    2,386 non-targeting control cells. Cells are labelled by their most abundant gRNA; cells that
    escaped the knockout are not removed (``obs["confident_assignment"]``).

    The file ``perturb/papalexi2021_thp1_subset.h5ad`` has no download address of its own (the full
    data are GEO GSE153056), so it is read from a local folder.

    Parameters
    ----------
    path
        The ``.h5ad`` file, the data folder that contains ``perturb/``, or the ``perturb/`` folder
        itself. When ``None`` the file is looked for under ``$PERTX_DATA_DIR`` and then in the
        cache folder ``pooch.os_cache("pertx_scvi")`` (e.g. ``~/.cache/pertx_scvi/perturb/``).

    Returns
    -------
    anndata.AnnData
        Raw UMI counts in ``X`` (float32 CSR); ``obs["perturbation"]`` categorical with the
        knockout target and ``"control"`` (the first category) for non-targeting cells; also
        ``obs["replicate"]``, ``obs["confident_assignment"]`` and ``obsm["grna_counts"]``.

    Raises
    ------
    FileNotFoundError
        When the file is not found; the message lists the places searched.
    """
    file = find_data_file(PAPALEXI_FILE, path)
    adata = ad.read_h5ad(file)
    adata.X = _as_csr_float32(adata.X)
    adata.obs["perturbation"] = _control_first(adata.obs["perturbation"])
    adata.uns["control_label"] = CONTROL
    return adata


def _gears_to_perturbation(condition: pd.Series) -> pd.Categorical:
    """Map GEARS condition labels (``A+ctrl``, ``ctrl+B``, ``A+B``, ``ctrl``) to ``A``/``A+B``/``control``."""
    parts = condition.astype(str).str.split("+")
    labels = parts.map(lambda genes: "+".join(g for g in genes if g != "ctrl") or CONTROL)
    return _control_first(labels)


def norman2019_fixture(path: str | os.PathLike | None = None) -> ad.AnnData:
    """Load the 50 cells x 50 genes Norman et al. 2019 format fixture (GEARS naming).

    50 random cells and 50 random genes of a Norman et al. 2019 (K562 CRISPRa, combinations) file
    in the GEARS/CPA naming convention. Too small to learn from; it is a fixture for combination
    labels and Ensembl-id gene names.

    Parameters
    ----------
    path
        The ``.h5ad`` file, the data folder that contains ``perturb/``, or the ``perturb/`` folder
        itself. When ``None`` the file is looked for under ``$PERTX_DATA_DIR`` and then in the
        cache folder ``pooch.os_cache("pertx_scvi")``.

    Returns
    -------
    anndata.AnnData
        As stored: log-normalised ``X``, raw counts in ``layers["counts"]``, ``var_names`` Ensembl
        ids with symbols in ``var["feature_name"]``, ``obs["condition"]`` GEARS labels such as
        ``FOXL2+HOXB9``, ``MEIS1+ctrl``, ``ctrl+PTPN9`` and ``ctrl``. Added:
        ``obs["perturbation"]``, the same labels in this package's convention (``FOXL2+HOXB9``,
        ``MEIS1``, ``PTPN9``, ``control``; categorical, ``"control"`` first).

    Raises
    ------
    FileNotFoundError
        When the file is not found; the message lists the places searched.
    """
    file = find_data_file(NORMAN_FIXTURE_FILE, path)
    adata = ad.read_h5ad(file)
    adata.obs["perturbation"] = _gears_to_perturbation(adata.obs["condition"])
    adata.uns["control_label"] = CONTROL
    return adata


PERTURBENCH_FILE = "perturb/perturbench_devel_norman19_mcfaline23.h5ad"
PERTURBENCH_SCREENS = ("norman19", "mcfaline23")


def perturbench(screen: str, path: str | os.PathLike | None = None) -> ad.AnnData:
    """Load one screen of the PerturBench development file (log-normalised values only).

    The development file of the PerturBench benchmark (Altos Labs, BSD-3-Clause; data from
    GEO): 5,961 cells x 500 highly variable genes, ``log1p(normalize_total)`` values and no
    counts. ``"norman19"``: K562 CRISPRa (Norman et al. 2019), 18 single genes and 15 double
    combinations (``KLF1+MAP2K6``), about 100 cells each. ``"mcfaline23"``: CRISPRi of 9 kinases
    in 3 glioma lines (``obs["cell_type"]`` T98G / U87MG / A172; McFaline-Figueroa et al. 2023),
    100 controls per line.

    Parameters
    ----------
    screen
        ``"norman19"`` or ``"mcfaline23"``.
    path
        The ``.h5ad`` file, the data folder that contains ``perturb/``, or the ``perturb/``
        folder itself; ``None`` looks under ``$PERTX_DATA_DIR`` and the cache folder.

    Returns
    -------
    anndata.AnnData
        The screen's cells: log-normalised ``X`` (float32 CSR) with scanpy's marker
        ``uns["log1p"]`` (set it up with ``PertTX.setup_anndata(..., is_log_normalized=True)``),
        ``obs["perturbation"]`` categorical with ``"control"`` first, ``obs["cell_type"]``.
    """
    if screen not in PERTURBENCH_SCREENS:
        raise ValueError(f"screen must be one of {PERTURBENCH_SCREENS}, got {screen!r}")
    file = find_data_file(PERTURBENCH_FILE, path)
    full = ad.read_h5ad(file)
    adata = full[full.obs["dataset"].astype(str) == screen].copy()
    adata.X = _as_csr_float32(adata.X)
    adata.obs["perturbation"] = _control_first(adata.obs["perturbation"])
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    adata.uns["log1p"] = {"base": None}
    adata.uns["control_label"] = CONTROL
    return adata
