"""Rows of an expression matrix in memory or on disk, read in bounded contiguous pieces.

A matrix is *in memory* (numpy array, scipy sparse matrix) or *lazy*: an h5py dataset (dense
X of an AnnData read with ``backed="r"``), an anndata backed sparse dataset (sparse X of such
an AnnData) or a dask array. Lazy matrices are only ever read by contiguous row ranges of
bounded size (a backed CSR matrix through the ``data``, ``indices`` and ``indptr`` arrays of
its on-disk format): anndata reads a backed CSR matrix indexed any other way (columns, or rows
of a CSC matrix) by loading all of it first.
"""

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

#: Values read at once (16 MiB of float32): the bound of every read of a lazy matrix.
MAX_READ_VALUES = 1 << 22
#: Bytes between two wanted rows that are read through rather than starting a new read: one
#: read call costs about as much as reading this much more.
GAP_BYTES = 1 << 19


def is_in_memory(matrix) -> bool:
    """Whether ``matrix`` is a numpy array or scipy sparse matrix (else it is read lazily)."""
    return isinstance(matrix, np.ndarray) or sp.issparse(matrix)


def is_backed_sparse(matrix) -> bool:
    """Whether ``matrix`` is an anndata backed sparse dataset (CSR or CSC on disk)."""
    return not is_in_memory(matrix) and getattr(matrix, "format", None) in ("csr", "csc")


def rows_per_read(matrix) -> int:
    """Rows of ``matrix`` read at once: at most :data:`MAX_READ_VALUES` values (dense)."""
    return max(1, MAX_READ_VALUES // max(int(matrix.shape[1]), 1))


def gap_rows(matrix) -> int:
    """Rows of ``matrix`` worth :data:`GAP_BYTES` (from its stored size, without reading it)."""
    n_rows = max(int(matrix.shape[0]), 1)
    if is_backed_sparse(matrix):
        data, indices = matrix.group["data"], matrix.group["indices"]
        row_bytes = data.shape[0] / n_rows * (data.dtype.itemsize + indices.dtype.itemsize)
    else:
        itemsize = np.dtype(getattr(matrix, "dtype", np.float32)).itemsize
        row_bytes = int(matrix.shape[1]) * itemsize
    return max(1, int(GAP_BYTES // max(row_bytes, 1.0)))


def _computed(chunk):
    if hasattr(chunk, "compute"):  # dask arrays
        chunk = chunk.compute()
    return chunk


def _range_reader(matrix):
    """``read(start, stop)``: rows ``start:stop`` of ``matrix``, one contiguous read of each
    stored array (a backed CSR matrix's arrays are looked up once, here)."""
    if is_backed_sparse(matrix) and matrix.format == "csr" and hasattr(matrix, "group"):
        # The CSR arrays of the on-disk format, sliced directly: anndata's own row slicing
        # costs milliseconds of bookkeeping per call, which scattered reads would pay per row.
        group, n_columns = matrix.group, int(matrix.shape[1])
        data, indices, indptr = group["data"], group["indices"], group["indptr"]

        def read(start: int, stop: int) -> sp.csr_matrix:
            offsets = np.asarray(indptr[start : stop + 1], dtype=np.int64)
            begin, end = int(offsets[0]), int(offsets[-1])
            return sp.csr_matrix(
                (data[begin:end], indices[begin:end], offsets - begin),
                shape=(stop - start, n_columns),
            )

        return read
    return lambda start, stop: _computed(matrix[start:stop])


def _float32(chunk) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(chunk):
        return sp.csr_matrix(chunk, dtype=np.float32)
    return np.asarray(chunk, dtype=np.float32)


def iter_row_chunks(matrix, n_rows: int | None = None) -> Iterator[tuple[int, int, object]]:
    """``(start, stop, rows)`` of consecutive row ranges of ``matrix``, ``n_rows`` at a time
    (default :func:`rows_per_read`); ``rows`` as stored (numpy or scipy sparse)."""
    n_rows = n_rows or rows_per_read(matrix)
    read = _range_reader(matrix)
    for start in range(0, matrix.shape[0], n_rows):
        stop = min(start + n_rows, matrix.shape[0])
        yield start, stop, read(start, stop)


def iter_stored_values(matrix, n_values: int | None = None) -> Iterator[np.ndarray]:
    """The stored values of ``matrix`` (non-zeros of a sparse matrix, every entry of a dense
    one) as 1-D arrays of at most about ``n_values`` values (default
    :data:`MAX_READ_VALUES`), in storage order.

    A backed sparse dataset is read straight from its ``data`` array (any format); other lazy
    matrices by row ranges. In-memory values are views, not copies.
    """
    n_values = n_values or MAX_READ_VALUES
    if sp.issparse(matrix):
        data = matrix.data
        for start in range(0, len(data), n_values):
            yield data[start : start + n_values]
    elif is_backed_sparse(matrix):
        data = matrix.group["data"]
        for start in range(0, data.shape[0], n_values):
            yield np.asarray(data[start : start + n_values])
    else:
        n_rows = max(1, n_values // max(int(matrix.shape[1]), 1))
        for _, _, chunk in iter_row_chunks(matrix, n_rows):
            yield chunk.data if sp.issparse(chunk) else np.asarray(chunk).reshape(-1)


def _spans(positions: np.ndarray, max_rows: int, max_gap: int) -> np.ndarray:
    """(k + 1,) boundaries splitting sorted ``positions`` into runs read with one slice each:
    a new run where the gap exceeds ``max_gap`` rows or a ``max_rows`` row window ends."""
    if not len(positions):
        return np.zeros(1, dtype=np.int64)
    window = positions // max_rows
    breaks = np.flatnonzero((np.diff(positions) > max_gap) | (np.diff(window) != 0)) + 1
    return np.concatenate([[0], breaks, [len(positions)]]).astype(np.int64)


def read_rows(
    matrix, positions: np.ndarray, columns: np.ndarray | None = None
) -> np.ndarray | sp.csr_matrix:
    """Rows ``positions`` (sorted, unique) of ``matrix`` as float32, columns in ``columns``
    order (all columns when None): dense numpy for a dense matrix, CSR for a sparse one.

    A lazy matrix is read by contiguous slices covering runs of nearby positions (rows less
    than :func:`gap_rows` apart), each of at most :func:`rows_per_read` rows; an in-memory one
    is indexed directly.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if is_in_memory(matrix):
        rows = matrix[positions]
    else:
        bounds = _spans(positions, rows_per_read(matrix), gap_rows(matrix))
        read, parts = _range_reader(matrix), []
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            low, high = int(positions[begin]), int(positions[end - 1]) + 1
            parts.append(read(low, high)[positions[begin:end] - low])
        if not parts:
            rows = read(0, 0)
        elif sp.issparse(parts[0]):
            rows = sp.vstack(parts, format="csr")
        else:
            rows = np.concatenate(parts)
    if columns is not None:
        rows = rows[:, columns]
    return _float32(rows)
