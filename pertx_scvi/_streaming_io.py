"""Predicted cells written to ``.h5ad`` / ``.zarr`` as they are made (see :mod:`._streaming`).

The file holds what ``collect_anndata(...).write_h5ad(path)`` would, without ever holding all
rows: every row-aligned element (``X``, ``layers["mean"]``, obs, obsm) is created by anndata's
own writer (:func:`anndata.io.write_elem`) from the first block, resized to the final number of
rows, then filled block by block. Count samples go to ``layers["counts"]`` (CSR), whose rows must
be appended in order (perturbation-major) while blocks come source batch by source batch: they
are appended per perturbation and sample to a temporary file beside the output and copied in
order at the end. The result is written under a hidden name and moved to ``path`` when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata import settings
from anndata.io import sparse_dataset, write_elem

from ._streaming import PredictionBlock, PredictionLayout, block_arrays

FILE_FORMATS = ("h5ad", "zarr")
# Sparse arrays are appended in pieces: chunk them in large slices, not in the first piece's.
_SPARSE_CHUNK = 1 << 18
# The row-aligned arrays are written a source batch at a time, not in row order: a larger
# HDF5 chunk cache keeps partly written chunks in memory between those writes.
_H5_CACHE_BYTES = 64 << 20


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a Path; a clear error when it exists and may not be replaced."""
    path = Path(path).expanduser()
    if path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists: pass overwrite=True to replace it, or choose another path"
            )
        if path.is_dir() and not ((path / ".zgroup").exists() or (path / "zarr.json").exists()):
            raise IsADirectoryError(f"{path} is a folder but not a zarr store: not replaced")
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _row_chunks(n_rows: int, n_columns: int, batch_size: int) -> int:
    """Rows per chunk of a row-aligned array: a block, and about 4 MiB at most."""
    return max(1, min(batch_size, n_rows, (4 << 20) // max(4 * n_columns, 1)))


class _RowStore:
    """Row-aligned elements of an AnnData store, created from a first block then filled."""

    def __init__(self, root, layout: PredictionLayout, batch_size: int, h5: bool):
        self.root, self.layout, self.h5 = root, layout, h5
        self.batch_size = batch_size
        self.frames: dict[str, list[str]] = {}  # dataframe element -> its columns on disk

    def _kwargs(self, n_columns: int | None) -> dict:
        n_rows = self.layout.n_rows
        if n_columns is None:
            chunks = (max(1, min(16 * self.batch_size, n_rows)),)
            shape = (None,)
        else:
            chunks = (_row_chunks(n_rows, n_columns, self.batch_size), n_columns)
            shape = (None, n_columns)
        return {"chunks": chunks, "maxshape": shape} if self.h5 else {"chunks": chunks}

    def create(self, key: str, value: np.ndarray | pd.DataFrame) -> None:
        """Write ``value`` (the first rows) as anndata would, then extend it to every row."""
        parent, _, name = key.rpartition("/")
        group = self.root[parent] if parent else self.root
        if isinstance(value, pd.DataFrame):  # pandas 3's string index is written as a group
            value = value.set_axis(value.index.astype(object))
        n_columns = None if isinstance(value, pd.DataFrame) else value.shape[1]
        write_elem(group, name, value, dataset_kwargs=self._kwargs(n_columns))
        for array in self._arrays(key, value):
            array.resize((self.layout.n_rows, *array.shape[1:]))

    def _arrays(self, key: str, value):
        """The on-disk arrays with one entry per row of element ``key``."""
        if not isinstance(value, pd.DataFrame):
            return [self.root[key]]
        group = self.root[key]
        names = [group.attrs["_index"], *map(str, value.columns)]
        return [
            group[name]["codes"]
            if isinstance(group[name], h5py.Group | zarr.Group)
            else group[name]
            for name in names
        ]

    def write(self, key: str, rows: slice, value: np.ndarray | pd.DataFrame) -> None:
        if not isinstance(value, pd.DataFrame):
            self.root[key][rows] = value
            return
        columns = [np.asarray(value.index.to_numpy(), dtype=object)]
        for _, column in value.items():
            if isinstance(column.dtype, pd.CategoricalDtype):
                columns.append(column.cat.codes.to_numpy())
            else:
                columns.append(column.to_numpy())
        for array, values in zip(self._arrays(key, value), columns, strict=True):
            array[rows] = values


class _CountPieces:
    """Sampled counts per perturbation and sample, appended batch by batch to a temporary
    HDF5 file, then copied in row order."""

    def __init__(self, path: Path, wide: bool):
        self.file = h5py.File(path, "w")
        self.kwargs = {"chunks": (_SPARSE_CHUNK,)}
        if wide:  # more entries than a 32-bit index holds
            self.kwargs["indptr_dtype"] = np.int64

    def append(self, key: str, counts: sp.csr_matrix) -> None:
        if key in self.file:
            sparse_dataset(self.file[key]).append(counts)
        else:
            write_elem(self.file, key, counts, dataset_kwargs=self.kwargs)

    def copy_to(self, group, name: str, keys: list[str], rows_per_chunk: int) -> None:
        """Rows of ``keys`` in order, as one CSR element ``group[name]``."""
        target = None
        for key in keys:
            piece = sparse_dataset(self.file[key])
            for start in range(0, piece.shape[0], rows_per_chunk):
                part = piece[start : start + rows_per_chunk]
                if target is None:
                    write_elem(group, name, part, dataset_kwargs=self.kwargs)
                    target = sparse_dataset(group[name])
                else:
                    target.append(part)

    def close(self) -> None:
        self.file.close()


def write_predictions(
    blocks: Iterable[PredictionBlock],
    layout: PredictionLayout,
    path: Path,
    file_format: str,
    batch_size: int,
    overwrite: bool,
) -> Path:
    """Write the predicted cells of ``blocks`` to ``path`` (``"h5ad"`` or ``"zarr"``)."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file format must be one of {FILE_FORMATS}, got {file_format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    _remove(partial)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
            _write(blocks, layout, partial, Path(scratch), file_format, batch_size)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} was created while predicting: not replaced")
            _remove(path)
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise
    return path


def _write(blocks, layout, partial: Path, scratch: Path, file_format: str, batch_size: int):
    h5 = file_format == "h5ad"
    if h5:
        root = h5py.File(partial, "w", rdcc_nbytes=_H5_CACHE_BYTES, rdcc_nslots=100_003)
    else:
        root = zarr.open_group(partial, mode="w", zarr_format=settings.zarr_write_format)
    n_genes = len(layout.var_names)
    pieces = None
    if layout.counts and layout.n_samples > 0:
        pieces = _CountPieces(scratch / "counts.h5", wide=layout.n_rows * n_genes >= 2**31)
    try:
        # As anndata's write_h5ad: the root's encoding, then each element.
        root.attrs["encoding-type"] = "anndata"
        root.attrs["encoding-version"] = "0.1.0"
        write_elem(root, "var", layout.var())
        for name in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(root, name, {})
        write_elem(root, "uns", dict(layout.uns))
        store = _RowStore(root, layout, batch_size, h5)
        created = False
        for block in blocks:
            arrays = block_arrays(block)
            for s in range(layout.n_sample_rows):
                rows = layout.block_rows(block, s)
                elements = {"X": arrays["X"]}
                if layout.counts:
                    elements["layers/mean"] = arrays["mean"]
                obs = layout.obs(np.arange(rows.start, rows.stop))
                heads = {name: arrays[f"heads/{name}"] for name in block.heads}
                columns, tables = layout.head_columns(obs.index, heads)
                elements["obs"] = obs.assign(**columns)
                elements.update({f"obsm/{name}": table for name, table in tables.items()})
                for key, value in elements.items():
                    if not created:
                        store.create(key, value)
                    store.write(key, rows, value)
                created = True
            if pieces is not None:
                for s, draw in enumerate(block.samples):
                    counts = sp.csr_matrix(draw.cpu().numpy(), dtype=np.float32)
                    pieces.append(f"{block.perturbation}_{s}", counts)
        if pieces is not None:
            keys = [
                f"{p}_{s}"
                for p in range(len(layout.perturbations))
                for s in range(layout.n_samples)
            ]
            pieces.copy_to(root["layers"], "counts", keys, max(batch_size, 1024))
    finally:
        if pieces is not None:
            pieces.close()
        if h5:
            root.close()
    if not h5:
        zarr.consolidate_metadata(str(partial))
