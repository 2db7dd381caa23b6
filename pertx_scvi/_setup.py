"""Setup and registry role of :class:`~pertx_scvi.PertTX`: ``setup_anndata`` and the
helpers that read the AnnData registry (labels, gene sets, codes, the registered arrays)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)

from . import _validation as check
from ._constants import REGISTRY_KEYS
from ._labels import (
    DEFAULT_CONTROL_TOKENS,
    check_labels,
    is_blank_label,
    parse_perturbation,
)
from .data import RegisteredCells, read_rows
from .data._rows import is_in_memory


class SetupMixin:
    """``setup_anndata`` and the registry helpers of :class:`~pertx_scvi.PertTX`."""

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        perturbation_key: str,
        control_group: str,
        layer: str | None = None,
        cell_type_key: str | None = None,
        batch_key: str | None = None,
        phenotype_keys: Sequence[str] | None = None,
        label_separator: str = "+",
        gene_symbols: str | None = None,
        is_log_normalized: bool = False,
        **kwargs,
    ) -> None:
        """Register a perturbation screen with PertTX.

        Parameters
        ----------
        adata
            Cells x genes with raw counts in ``adata.X`` or ``adata.layers[layer]``.
        perturbation_key
            ``obs`` column of perturbation labels: a gene (``"STAT1"``), a combination
            (``"IRF1+JAK2"``, any number of genes, GEARS style ``"A+ctrl"`` too) or the control.
        control_group
            The control label in ``perturbation_key`` (``"ctrl"`` is also read as control).
        layer
            Layer holding counts; ``None`` uses ``adata.X``.
        cell_type_key, batch_key
            Optional ``obs`` columns; control sources are paired within each cell type x batch.
        phenotype_keys
            Optional numeric ``obs`` columns of per-cell phenotype scores.
        label_separator
            Separator between the genes of a combination label.
        gene_symbols
            ``var`` column with gene symbols when ``var_names`` are other ids (e.g. Ensembl).
        is_log_normalized
            The matrix holds log-normalised values (``sc.pp.normalize_total`` +
            ``sc.pp.log1p``, as in GEARS and PerturBench files), not counts. The model then
            takes them as they are and fits them with ``likelihood="mse"`` (its default for such
            data; the count likelihoods refuse them).

        Notes
        -----
        Every check runs before anything is registered: on an error ``adata`` is unchanged.
        Labels that name the same gene set (``"A+B"`` and ``"B+A"``, ``"A"``, ``"A "`` and
        ``"A+ctrl"``) are one perturbation everywhere (training, ``holdout_perturbations``,
        :meth:`evaluate`); a warning names the spellings. Empty labels (``""``, ``"+"``) and
        one gene written in two cases (``stat1`` and ``STAT1``) are errors.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if adata.n_vars == 0:
            raise ValueError("adata has no genes (adata.n_vars == 0): PertTX needs their counts")
        if adata.n_obs == 0:
            raise ValueError("adata has no cells (adata.n_obs == 0)")
        check.check_obs_column(adata, perturbation_key, "perturbation")
        check.check_control_group(adata, perturbation_key, control_group)
        for key, what in ((cell_type_key, "cell type"), (batch_key, "batch")):
            if key is not None:
                check.check_obs_column(adata, key, what)
        phenotype_keys = list(phenotype_keys) if phenotype_keys else None
        for key in phenotype_keys or []:
            check.check_obs_column(adata, key, "phenotype", numeric=True)
        matrix = check.get_matrix(adata, layer)
        check.check_readable_rows(matrix, layer)
        check.check_counts(matrix, layer, require_integer=False)
        if is_log_normalized:
            check.check_log_normalized(matrix, layer)
        check.check_unique_genes(pd.Index(adata.var_names))
        if gene_symbols is not None:
            if gene_symbols not in adata.var.columns:
                raise KeyError(
                    f"gene_symbols column {gene_symbols!r} not found in adata.var "
                    f"(columns: {list(adata.var.columns)})"
                )
            check.check_unique_genes(
                pd.Index(adata.var[gene_symbols].astype(str)), f"adata.var[{gene_symbols!r}]"
            )
        measured = adata.var[gene_symbols].astype(str) if gene_symbols else adata.var_names
        merged = check_labels(
            adata.obs[perturbation_key].astype(str).value_counts(sort=False),
            perturbation_key,
            str(control_group),
            label_separator,
            measured_genes=measured,
        )
        if merged:
            shown = "; ".join(" = ".join(map(repr, spellings)) for spellings in merged.values())
            if len(merged) > 5:
                shown = "; ".join(shown.split("; ")[:5]) + f"; and {len(merged) - 5} more"
            warnings.warn(
                f"adata.obs[{perturbation_key!r}] spells {len(merged)} perturbation(s) in "
                f"several ways, each read as one perturbation (one gene set): {shown}. Holding "
                "out or evaluating one spelling includes the cells of all of them.",
                UserWarning,
                stacklevel=2,
            )

        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=not is_log_normalized),
            CategoricalObsField(REGISTRY_KEYS.PERTURBATION_KEY, perturbation_key),
            CategoricalObsField(REGISTRY_KEYS.CELL_TYPE_KEY, cell_type_key),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            NumericalJointObsField(REGISTRY_KEYS.PHENOTYPE_KEY, phenotype_keys),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        obs_columns, uns_keys = list(adata.obs.columns), list(adata.uns.keys())
        try:
            adata_manager.register_fields(adata, **kwargs)
        except Exception:  # scvi-tools' own checks: take back what it added
            adata.obs.drop(
                columns=[c for c in adata.obs.columns if c not in obs_columns], inplace=True
            )
            for key in [k for k in adata.uns.keys() if k not in uns_keys]:
                del adata.uns[key]
            raise
        cls.register_manager(adata_manager)

    # ---- registry helpers --------------------------------------------------------------------
    @property
    def _setup_args(self) -> dict:
        return self.registry_["setup_args"]

    @property
    def _is_log_normalized(self) -> bool:
        return bool(self._setup_args.get("is_log_normalized", False))

    def _parse(self, label: str) -> tuple[str, ...]:
        setup = self._setup_args
        tokens = (*DEFAULT_CONTROL_TOKENS, str(setup["control_group"]))
        return parse_perturbation(label, setup["label_separator"], tokens)

    def _mapping(self, key: str) -> np.ndarray:
        return np.asarray(self.adata_manager.get_state_registry(key).categorical_mapping)

    def _label_categories(self) -> list[str]:
        return [str(label) for label in self._mapping(REGISTRY_KEYS.PERTURBATION_KEY)]

    def _gene_names(self, adata: AnnData) -> pd.Index:
        symbols = self._setup_args["gene_symbols"]
        names = adata.var[symbols].astype(str) if symbols else adata.var_names
        return pd.Index(np.asarray(names, dtype=str))

    def _registered_var_names(self) -> pd.Index:
        return pd.Index(self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY).column_names)

    def _label_codes(self, labels) -> np.ndarray:
        """Code of each label's gene set: every spelling of a gene set gets the code of its
        first category (``"B+A"`` that of ``"A+B"``); -1 for unknown or empty labels."""
        categorical = pd.Categorical(np.asarray(labels, dtype=str))
        separator = self._setup_args["label_separator"]
        table = np.array(
            [
                -1
                if is_blank_label(label, separator)
                else self._gene_set_codes.get(self._parse(label), -1)
                for label in categorical.categories
            ]
            + [-1],
            dtype=np.int64,
        )
        return table[categorical.codes]

    def _registered_cells(self, adata: AnnData | None = None) -> RegisteredCells:
        """The one path from AnnData to tensors: the registry's arrays of ``adata``.

        ``None`` (or the registered AnnData) reads the model's own registry, labels included.
        Another AnnData is a set of source cells: its genes are matched to the training genes
        and its setup transferred from the registry (:meth:`_aligned_adata`, on a new AnnData,
        so ``adata`` is unchanged), its labels read as the control group. Codes and labels are
        read once (small); expression rows are read one batch at a time from the AnnData's own
        matrix (in memory or backed; sparse rows densified per batch), its columns put in
        training order per batch: the matrix is never loaded or copied whole.
        """
        if adata is None or adata is self.adata:
            manager = self.adata_manager
            matrix, columns = manager.get_from_registry(REGISTRY_KEYS.X_KEY), None
        else:
            aligned, matrix, columns = self._aligned_sources(adata)
            manager = self.adata_manager.transfer_fields(aligned)
        categories = manager.get_from_registry(REGISTRY_KEYS.PERTURBATION_KEY).ravel()
        label_codes = self._label_codes(self._label_categories())[categories.astype(np.int64)]
        cell_type = manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY).ravel().astype(np.int64)
        batch = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel().astype(np.int64)
        n_batches = len(self._mapping(REGISTRY_KEYS.BATCH_KEY))
        phenotype = None
        if manager is self.adata_manager and self._setup_args["phenotype_keys"]:
            values = manager.get_from_registry(REGISTRY_KEYS.PHENOTYPE_KEY)
            phenotype = np.asarray(values, dtype=np.float32)
        return RegisteredCells(
            matrix=matrix,
            label_codes=label_codes,
            label_gene_sets=self._label_gene_sets,
            context=cell_type * n_batches + batch,
            cell_type=cell_type,
            phenotype=phenotype,
            columns=columns,
        )

    def _canonical_labels(self, labels) -> np.ndarray:
        """One spelling per gene set: sorted genes joined by the separator (``"B+A"``,
        ``"A+B+ctrl"`` -> ``"A+B"``), the control group for control labels; empty labels kept."""
        setup = self._setup_args
        separator, control = setup["label_separator"], str(setup["control_group"])
        categorical = pd.Categorical(np.asarray(labels, dtype=str))
        spelled = [
            label
            if is_blank_label(label, separator)
            else (separator.join(self._parse(label)) or control)
            for label in categorical.categories
        ]
        return np.asarray([*spelled, ""], dtype=object)[categorical.codes]

    def _aligned_adata(self, adata: AnnData, sources: bool = False) -> AnnData:
        """A new AnnData of ``adata``'s cells: the training genes in training order (matched by
        name; others dropped), the registered counts checked, one spelling per gene set in the
        perturbation column (:meth:`_canonical_labels`). ``adata`` is not modified.

        With ``sources``, the cells are taken as control cells to predict from: the registered
        cell-type and batch columns must be present with categories seen at setup, the
        perturbation column is set to the control group and absent phenotype columns to NaN
        (neither is read from source cells), so that the registry's setup transfers. The
        expression is then not copied: the new AnnData's matrix is an empty placeholder of the
        aligned shape (no stored values), and :meth:`_registered_cells` reads the rows of
        ``adata``'s own matrix, in memory or backed, per batch.
        """
        if sources:
            return self._aligned_sources(adata)[0]
        layer = self._setup_args["layer"]
        matrix = check.get_matrix(adata, layer)
        order = check.align_genes(adata, self._registered_var_names())
        if adata is not self.adata:
            check.check_input_counts(matrix, layer, self.module.likelihood, columns=order)
        if order is not None:
            # A backed matrix indexed by columns would be loaded whole first (and h5py takes
            # increasing column indices only): read it once, in row chunks, columns reordered.
            in_memory = is_in_memory(matrix)
            matrix = (
                matrix[:, order] if in_memory else read_rows(matrix, np.arange(adata.n_obs), order)
            )
        return self._aligned_with(adata, matrix, order, sources=False)

    def _aligned_sources(self, adata: AnnData) -> tuple[AnnData, object, np.ndarray | None]:
        """``(aligned, matrix, columns)``: :meth:`_aligned_adata` with ``sources`` (its matrix
        a placeholder), ``adata``'s registered matrix as it is (in memory or backed) and the
        matrix column of each training gene (None when they are the same)."""
        layer = self._setup_args["layer"]
        matrix = check.get_matrix(adata, layer)
        check.check_readable_rows(matrix, layer)
        order = check.align_genes(adata, self._registered_var_names())
        if adata is not self.adata:
            check.check_input_counts(matrix, layer, self.module.likelihood, columns=order)
        n_genes = matrix.shape[1] if order is None else len(order)
        # No stored values: the registry transfer reads only the shape and gene names.
        placeholder = sp.csr_matrix((adata.n_obs, n_genes), dtype=np.float32)
        return self._aligned_with(adata, placeholder, order, sources=True), matrix, order

    def _aligned_with(self, adata: AnnData, matrix, order, sources: bool) -> AnnData:
        """The new AnnData of :meth:`_aligned_adata` around ``matrix`` (already aligned)."""
        setup = self._setup_args
        layer, key = setup["layer"], setup["perturbation_key"]
        var = adata.var if order is None else adata.var.iloc[order]
        obs = adata.obs.copy()
        if sources:
            for argument, registry_key in (
                ("cell_type_key", REGISTRY_KEYS.CELL_TYPE_KEY),
                ("batch_key", REGISTRY_KEYS.BATCH_KEY),
            ):
                if setup[argument] is not None:
                    obs[setup[argument]] = check.registered_categories(
                        obs, setup[argument], self._mapping(registry_key)
                    )
            obs[key] = pd.Categorical([str(setup["control_group"])] * adata.n_obs)
            for column in setup["phenotype_keys"] or []:
                if column not in obs.columns:
                    obs[column] = np.nan
        elif key in obs.columns:
            obs[key] = self._canonical_labels(obs[key])
        layers = {} if layer is None else {layer: matrix}
        uns = {"log1p": {"base": None}} if self._is_log_normalized else {}  # scanpy's marker
        return AnnData(X=matrix, obs=obs, var=var.copy(), layers=layers, uns=uns)

    def _context_names(self) -> list[str]:
        return [
            f"{cell_type}/{batch}"
            for cell_type in self._mapping(REGISTRY_KEYS.CELL_TYPE_KEY)
            for batch in self._mapping(REGISTRY_KEYS.BATCH_KEY)
        ]

    def _control_codes(self) -> np.ndarray:
        return np.array([i for i, genes in enumerate(self._label_genes) if not genes])

    def _head_sizes(self, adata: AnnData) -> dict:
        """Sizes of the head outputs from the registry, and phenotype centre and spread."""
        setup = self._setup_args
        n_cell_types = 0
        if setup["cell_type_key"] is not None:
            n_cell_types = len(self._mapping(REGISTRY_KEYS.CELL_TYPE_KEY))
        keys = list(setup["phenotype_keys"] or [])
        loc = scale = None
        if keys:
            values = adata.obs[keys].to_numpy(dtype=np.float64)
            finite = np.where(np.isfinite(values), values, np.nan)
            with np.errstate(all="ignore"):
                loc = np.nan_to_num(np.nanmean(finite, 0), nan=0.0)
                scale = np.nan_to_num(np.nanstd(finite, 0), nan=1.0)
            loc = torch.from_numpy(loc).float()
            scale = torch.from_numpy(np.where(scale > 0, scale, 1.0)).float()
        return {
            "n_cell_types": n_cell_types,
            "n_perturbation_labels": len(self._label_categories()),
            "n_phenotypes": len(keys),
            "phenotype_loc": loc,
            "phenotype_scale": scale,
        }
