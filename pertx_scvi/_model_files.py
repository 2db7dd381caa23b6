"""Reading and writing PertTX model folders: tensors and plain data only, checked, saved atomically.

A model folder holds ``weights.safetensors`` (the module's state dict), ``model.json`` (init
parameters, genes, labels, attributes, versions), ``registry.json`` (scvi-tools' registry),
``history.json``, the gene graph(s) / embedding / id table the model was built with as ``.npz``
arrays, optionally ``adata.h5ad``, and ``manifest.json`` (SHA-256 and size of every file, written
last). Nothing is pickled; every file is checked against the manifest before it is read. See
``docs/model_files.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import uuid
import warnings
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad

from ._graph_setup import load_gene_table, load_graphs
from ._validation import align_genes
from .graphs import GeneGraph, load_id_table

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "pertx-model", 1
MANIFEST, MODEL_JSON, REGISTRY_JSON = "manifest.json", "model.json", "registry.json"
HISTORY_JSON, WEIGHTS = "history.json", "weights.safetensors"
ADATA, LEGACY_MODEL = "adata.h5ad", "model.pt"
# Names (after the prefix) of this format's and scvi-tools' files: the old model's on overwrite.
_OWN_FILES = re.compile(
    r"(manifest|model|registry|history)\.json|weights\.safetensors|gene_graph_\d+\.npz"
    r"|(gene_embedding|gene_token_embedding|id_table)\.npz|adata\.h5ad|mdata\.h5mu|model\.pt"
)
# Attributes kept in files of their own, or rebuilt from the init parameters.
_SPECIAL_ATTRIBUTES = {"init_params_", "registry_", "history_", "graph_setup_"}
_EDGE_TEXT, _EDGE_VALUES = ("source", "target", "relation"), ("weight", "sign", "directed")


class ModelFileError(ValueError):
    """A model folder that is missing, incomplete, altered or not in the expected format."""


class LegacyModelError(ModelFileError):
    """A model saved in scvi-tools' pickle format (``model.pt``), refused without allow_pickle."""


# ---- plain data ----------------------------------------------------------------------------------
def to_json(value: Any, where: str = "value") -> Any:
    """``value`` as JSON data; arrays, tuples, non-finite floats and DataFrames become tagged dicts.

    Raises
    ------
    TypeError
        For anything else (objects, functions...), naming ``where``.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, np.generic):
        return to_json(value.item(), where)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
        if value.ndim == 0:
            return to_json(value.item(), where)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUO":
            raise TypeError(f"{where}: arrays of dtype {value.dtype} cannot be saved")
        dtype = "object" if value.dtype.kind == "O" else value.dtype.str
        data = [to_json(v, where) for v in value.ravel().tolist()]
        return {"__ndarray__": {"dtype": dtype, "shape": list(value.shape), "data": data}}
    if isinstance(value, pd.DataFrame):
        body = {
            "index": to_json(np.asarray(value.index), where),
            "index_name": to_json(value.index.name, where),
            "columns": [str(c) for c in value.columns],
            "values": [to_json(value.iloc[:, j].to_numpy(), where) for j in range(value.shape[1])],
        }
        return {"__frame__": body}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: to_json(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: a {type(value).__name__} is not plain data and cannot be saved")


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, body),) = value.items() if len(value) == 1 else (("", None),)
    if tag == "__float__":
        return float(body)
    if tag == "__tuple__":
        return tuple(from_json(v) for v in body)
    if tag == "__ndarray__":
        data = [from_json(v) for v in body["data"]]
        if body["dtype"] == "object":
            array = np.empty(len(data), dtype=object)
            for i, v in enumerate(data):
                array[i] = v
        else:
            dtype = np.dtype(body["dtype"])
            if dtype.kind not in "biufU":
                raise ModelFileError(f"unsupported array dtype {body['dtype']!r}")
            array = np.array(data, dtype=dtype)
        return array.reshape(body["shape"])
    if tag == "__frame__":
        index = pd.Index(from_json(body["index"]), name=body["index_name"])
        frame = pd.DataFrame(dict(enumerate(from_json(body["values"]))), index=index)
        # pandas' default text dtype (object before pandas 3, str from 3), as the logger's frames
        frame.columns = pd.Index(body["columns"])
        return frame
    return {k: from_json(v) for k, v in value.items()}


def _json_writer(data: Any) -> Callable[[Path], None]:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return lambda path: path.write_bytes(raw)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not readable JSON ({exc})") from exc


# ---- tables ----------------------------------------------------------------------------------------
def _npz_writer(arrays: dict[str, np.ndarray]) -> Callable[[Path], None]:
    return lambda path: np.savez_compressed(path, **arrays)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path} is not a readable .npz table ({exc})") from exc


def _table_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A genes x dims table as arrays ``genes``, ``columns`` (text) and ``values`` (float32)."""
    genes, columns = (np.asarray(x, dtype=str) for x in (frame.index, frame.columns))
    return {"genes": genes, "columns": columns, "values": frame.to_numpy(dtype=np.float32)}


def _table_from_arrays(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    genes = pd.Index(arrays["genes"].astype(object), name="gene")
    return pd.DataFrame(arrays["values"], index=genes, columns=arrays["columns"].astype(object))


def _graph_arrays(graph: GeneGraph) -> dict[str, np.ndarray]:
    edges = graph.edges
    arrays = {c: edges[c].astype(str).to_numpy(dtype=str) for c in _EDGE_TEXT}
    return arrays | {c: edges[c].to_numpy() for c in _EDGE_VALUES}


def _graph_from_arrays(arrays: dict[str, np.ndarray]) -> GeneGraph:
    edges = {c: arrays[c].astype(object) for c in _EDGE_TEXT}
    return GeneGraph(pd.DataFrame(edges | {c: arrays[c] for c in _EDGE_VALUES}))


def graph_fingerprint(setup: Any) -> str | None:
    """SHA-256 of a ``GraphSetup``'s vocabulary and edge tensors (None without a setup)."""
    if setup is None:
        return None
    h = hashlib.sha256(json.dumps([setup.kind, [str(g) for g in setup.vocabulary]]).encode())
    for view in setup.graphs:
        h.update(json.dumps([view.name, list(view.relation_names)]).encode())
        for t in (view.edge_index, view.edge_type, view.edge_weight):
            h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


# ---- files -----------------------------------------------------------------------------------------
def _write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write one file of a model folder with ``write(path)`` and flush it to disk.

    Every file of a save goes through here (tests interrupt a save at this point).
    """
    write(path)
    _fsync(path)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prefix(prefix: str | None) -> str:
    p = prefix or ""
    if "/" in p or "\\" in p or p in (".", ".."):
        raise ValueError(f"prefix {prefix!r} must be a file-name prefix, not a path")
    return p


def _aside_hint(folder: Path) -> str:
    """A sentence naming a model left beside ``folder`` by an interrupted overwrite, if any."""
    aside = sorted(folder.parent.glob(f".{folder.name}.replaced-*"))
    hint = "; a save interrupted while replacing it left the previous model at {}: rename it back"
    return hint.format(aside[-1]) if aside else ""


def verify_model_files(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
    """Check every file of a model folder against its manifest (size and SHA-256); return it.

    A :class:`ModelFileError` names the manifest when it is missing, empty or unreadable, and
    every file that is missing, truncated or altered.
    """
    folder, p = Path(dir_path), _prefix(prefix)
    path = folder / f"{p}{MANIFEST}"
    if not path.is_file():
        raise ModelFileError(f"the manifest {path} is missing{_aside_hint(folder)}")
    raw = path.read_bytes()
    if not raw.strip():
        raise ModelFileError(f"the manifest {path} is empty (truncated): the model is incomplete")
    try:
        manifest = json.loads(raw)
        fmt, version = manifest["format"], int(manifest["format_version"])
        entries = {str(n): (str(e["sha256"]), int(e["size"])) for n, e in manifest["files"].items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"the manifest {path} is unreadable ({exc!r})") from exc
    required = {f"{p}{MODEL_JSON}", f"{p}{REGISTRY_JSON}", f"{p}{WEIGHTS}"}
    bad = [n for n in entries if n in ("", ".", "..") or "/" in n or "\\" in n]
    if fmt != FORMAT or bad or required - entries.keys():
        raise ModelFileError(
            f"the manifest {path} is unreadable: format {fmt!r}, names that are no file names "
            f"{bad}, absent entries {sorted(required - entries.keys())}"
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} was saved in format version {version} by a newer pertx_scvi; this one "
            f"reads up to version {FORMAT_VERSION}: upgrade pertx_scvi"
        )
    problems = []
    for name, (digest, size) in entries.items():
        file = folder / name
        actual = file.stat().st_size if file.is_file() else None
        if actual is None:
            problems.append(f"{file} is missing")
        elif actual < size:
            problems.append(f"{file} is truncated: {actual} of {size} bytes")
        elif actual > size:
            problems.append(f"{file} is altered: {actual} bytes, the manifest says {size}")
        elif _sha256(file) != digest:
            problems.append(f"{file} is altered: its SHA-256 differs from the manifest's")
    if problems:
        raise ModelFileError(
            f"the model at {folder} failed its file check:\n  " + "\n  ".join(problems)
        )
    return manifest


# ---- saving ----------------------------------------------------------------------------------------
def _versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    out["pertx_scvi"] = importlib.import_module("pertx_scvi").__version__
    for dist in ("scvi-tools", "torch", "anndata", "numpy", "pandas", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _table_files(model: Any, p: str, files: dict) -> tuple[dict, dict]:
    """Add the graph / embedding / id table files; return the init parameters without them."""
    params = dict(model.init_params_["non_kwargs"])
    graph, table, ids = (params.pop(k, None) for k in ("gene_graph", "gene_embedding", "id_table"))
    tables: dict[str, Any] = {}
    tokens = params.pop("gene_token_embedding", None)  # the rows the model kept: a DataFrame
    if tokens is not None:
        tables["gene_token_embedding"] = f"{p}gene_token_embedding.npz"
        files[tables["gene_token_embedding"]] = _npz_writer(_table_arrays(load_gene_table(tokens)))
    if getattr(model, "graph_setup_", None) is None:  # label encoder: the inputs are unused
        return params, tables
    try:
        if ids is not None:
            frame = load_id_table(ids)
            tables["id_table"] = f"{p}id_table.npz"
            arrays = {c: frame[c].to_numpy(dtype=str) for c in ("id", "id_type", "symbol")}
            files[tables["id_table"]] = _npz_writer(arrays)
        if graph is not None:
            graphs = load_graphs(graph, ids)  # as the model read them (files mapped by id_table)
            names = [f"{p}gene_graph_{i}.npz" for i in range(len(graphs))]
            for name, g in zip(names, graphs, strict=True):
                files[name] = _npz_writer(_graph_arrays(g))
            tables["gene_graph"] = {"files": names, "list": isinstance(graph, list | tuple)}
        if table is not None:
            tables["gene_embedding"] = f"{p}gene_embedding.npz"
            files[tables["gene_embedding"]] = _npz_writer(_table_arrays(load_gene_table(table)))
    except OSError as exc:
        raise ModelFileError(
            f"cannot save the model's gene graph / tables: the model was built from a file that "
            f"can no longer be read ({exc}); restore it, or build the model from GeneGraph / "
            "DataFrame objects"
        ) from exc
    return params, tables


def _model_files(model: Any, p: str, save_anndata: bool, adata_kwargs: dict) -> dict:
    """File name -> writer of every file of the model (the manifest excepted)."""
    from safetensors.torch import save

    tensors = {}
    for key, value in model.module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().cpu().contiguous().clone()  # clone: no shared storage
    weights = save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    files: dict[str, Callable[[Path], None]] = {f"{p}{WEIGHTS}": lambda f: f.write_bytes(weights)}
    params, tables = _table_files(model, p, files)
    attributes = {}
    for name, value in model._get_user_attributes():
        if name.endswith("_") and name not in _SPECIAL_ATTRIBUTES:
            try:
                attributes[name] = to_json(value, name)
            except TypeError as exc:
                warnings.warn(f"not saved with the model: {exc}", UserWarning, stacklevel=4)
    files[f"{p}{MODEL_JSON}"] = _json_writer(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_class": type(model).__name__,
            "versions": _versions(),
            "init_params": {
                "non_kwargs": to_json(params, "init_params"),
                "kwargs": to_json(model.init_params_["kwargs"], "init_params"),
            },
            "tables": tables,
            "var_names": [str(g) for g in model._registered_var_names()],
            "gene_names": [str(g) for g in model.gene_names],
            "perturbation_labels": model._label_categories(),
            "perturbation_genes": [str(g) for g in model.perturbation_genes],
            "graph_fingerprint": graph_fingerprint(getattr(model, "graph_setup_", None)),
            "attributes": attributes,
        }
    )
    files[f"{p}{REGISTRY_JSON}"] = _json_writer(to_json(model.registry_, "registry_"))
    if getattr(model, "history_", None) is not None:
        files[f"{p}{HISTORY_JSON}"] = _json_writer(to_json(model.history_, "history_"))
    if save_anndata:
        files[f"{p}{ADATA}"] = lambda path: model.adata.write(path, **adata_kwargs)
    return files


def _carry_other_files(target: Path, new: Path, p: str) -> None:
    """Link the files of ``target`` that are not this model's (other prefixes...) into ``new``."""
    own: set[str] = set()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        own = set(json.loads((target / f"{p}{MANIFEST}").read_bytes())["files"])
    for entry in target.iterdir():
        name = entry.name
        if name in own or (name.startswith(p) and _OWN_FILES.fullmatch(name[len(p) :])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / name, symlinks=True)
        else:
            try:
                os.link(entry, new / name, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry, new / name, follow_symlinks=False)


def _move_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first, then deleted."""
    if not target.exists():
        os.rename(new, target)
    else:
        aside = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.rename(target, aside)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _fsync(target.parent)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync(target.parent)


def write_model(
    model: Any,
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    save_anndata: bool = False,
    **adata_write_kwargs: Any,
) -> None:
    """Save ``model`` as a model folder: written beside ``dir_path``, the manifest last, and
    renamed into place (an existing model is renamed aside, the new one in, the old deleted;
    files of other prefixes are kept). A process killed at any point leaves the old or the new
    model at ``dir_path`` (or, between the two renames, the old one in ``.<name>.replaced-*``).
    """
    p = _prefix(prefix)
    target = Path(os.fspath(dir_path)).expanduser().absolute()
    if target.exists() and not overwrite:
        raise ModelFileError(
            f"{target} already exists: pass overwrite=True to replace the model there (the "
            "replacement is atomic), or choose another folder"
        )
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    files = _model_files(model, p, save_anndata, adata_write_kwargs)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        entries = {}
        for name, write in files.items():
            _write_file(new / name, write)
            entries[name] = {"sha256": _sha256(new / name), "size": (new / name).stat().st_size}
        if target.exists():
            _carry_other_files(target, new, p)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": entries}
        _write_file(new / f"{p}{MANIFEST}", _json_writer(manifest))
        _fsync(new)
        _move_into_place(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


# ---- loading ---------------------------------------------------------------------------------------
def _download_model(url: str, folder: Path, p: str) -> None:
    """Fetch a model folder published at ``url``: ``<url>/manifest.json`` and the files it lists."""
    base = url.rstrip("/")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.download-", dir=folder.parent))
    try:
        names = [f"{p}{MANIFEST}"]
        for name in names:  # grows with the manifest's files
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise ModelFileError(f"the manifest at {base} names {name!r}, not a file name")
            source = f"{base}/{urllib.parse.quote(name)}"
            try:
                with urllib.request.urlopen(source) as r, open(tmp / name, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as exc:
                raise ModelFileError(f"could not download {source} ({exc})") from exc
            if len(names) == 1:
                manifest = _read_json(tmp / name)
                names += list(manifest.get("files", {})) if isinstance(manifest, dict) else []
        folder.mkdir(exist_ok=True)
        for name in [*names[1:], names[0]]:  # the manifest last
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unregistered(adata: AnnData) -> AnnData:
    """Drop scvi-tools' ids copied from another AnnData (setting this one up would take over
    the other one's registration)."""
    from scvi.data._constants import _MANAGER_UUID_KEY, _SCVI_UUID_KEY

    for key in (_SCVI_UUID_KEY, _MANAGER_UUID_KEY):
        adata.uns.pop(key, None)
    return adata


def _aligned_adata(adata: AnnData, var_names: list[str]) -> AnnData:
    """``adata`` with the training genes in training order, matched by name (a copy if moved)."""
    positions = align_genes(adata, var_names)
    if positions is None:
        return adata
    logger.info("adata's genes put in the training order (a reordered copy of adata is used)")
    return _unregistered(adata[:, positions].copy())


def _init_params(doc: dict, folder: Path) -> dict:
    """Keyword arguments of the model's ``__init__``, the tables read from the folder."""
    params = from_json(doc["init_params"]["non_kwargs"])
    for values in from_json(doc["init_params"]["kwargs"]).values():
        params.update(values)
    tables = doc.get("tables", {})
    if "id_table" in tables:
        arrays = _read_npz(folder / tables["id_table"])
        params["id_table"] = pd.DataFrame({k: v.astype(object) for k, v in arrays.items()})
    if "gene_graph" in tables:
        graphs = [_graph_from_arrays(_read_npz(folder / f)) for f in tables["gene_graph"]["files"]]
        params["gene_graph"] = graphs if tables["gene_graph"]["list"] else graphs[0]
    for name in ("gene_embedding", "gene_token_embedding"):
        if name in tables:
            params[name] = _table_from_arrays(_read_npz(folder / tables[name]))
    return params


def read_model(
    cls: type,
    dir_path: str | os.PathLike,
    adata: AnnData | None = None,
    accelerator: str = "auto",
    device: int | str = "auto",
    prefix: str | None = None,
) -> Any:
    """Load a model folder written by :func:`write_model` (every file checked first)."""
    from safetensors.torch import load as load_tensors
    from scvi.model._utils import parse_device_args

    folder, p = Path(os.fspath(dir_path)).expanduser(), _prefix(prefix)
    manifest = verify_model_files(folder, p)
    doc = _read_json(folder / f"{p}{MODEL_JSON}")
    if not isinstance(doc, dict) or doc.get("model_class") != cls.__name__:
        raise ModelFileError(f"{folder / (p + MODEL_JSON)} describes no {cls.__name__}")
    registry = from_json(_read_json(folder / f"{p}{REGISTRY_JSON}"))
    history = None
    if f"{p}{HISTORY_JSON}" in manifest["files"]:
        history = from_json(_read_json(folder / f"{p}{HISTORY_JSON}"))
    if adata is None:
        if f"{p}{ADATA}" not in manifest["files"]:
            raise ValueError(
                f"{folder} holds no AnnData (saved without save_anndata=True): pass the "
                f"AnnData, e.g. {cls.__name__}.load(path, adata)"
            )
        adata = _unregistered(read_h5ad(folder / f"{p}{ADATA}"))
    adata = _aligned_adata(adata, doc["var_names"])
    _, _, device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )

    cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
    model = cls(adata, **_init_params(doc, folder))
    for name, value in doc.get("attributes", {}).items():
        setattr(model, name, from_json(value))
    model.history_ = history
    if [str(g) for g in model.gene_names] != doc["gene_names"]:
        raise ValueError(
            "adata's gene names (adata.var[gene_symbols]) differ from the training ones"
        )
    genes = [str(g) for g in model.perturbation_genes]
    rebuilt = graph_fingerprint(getattr(model, "graph_setup_", None))
    if genes != doc["perturbation_genes"] or rebuilt != doc.get("graph_fingerprint"):
        raise ModelFileError(
            f"the perturbation genes / gene graph rebuilt from {folder} differ from the ones the "
            "model was saved with (another pertx_scvi version may build them differently)"
        )
    weights = folder / f"{p}{WEIGHTS}"
    try:
        state = load_tensors(weights.read_bytes())
    except Exception as exc:  # safetensors raises its own error type
        raise ModelFileError(f"{weights} is not a readable safetensors file ({exc})") from exc
    model.module.on_load(model)
    try:
        model.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{weights} does not fit the model in {folder}: {exc}") from exc
    model.to_device(device)
    model.module.eval()
    model._validate_anndata(adata)
    return model


class ModelFilesMixin:
    """``save`` / ``load`` of model folders with tensors and plain data only (see the module)."""

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save the model as a folder of tensors and plain data, atomically.

        Parameters
        ----------
        dir_path
            Folder to create (its parent is created too).
        prefix
            Prefix of the file names (several models can share a folder).
        overwrite
            Replace an existing folder (atomically; other prefixes' files are kept); without
            it an existing folder is an error.
        save_anndata
            Also save the AnnData as ``adata.h5ad`` (then ``load`` needs no ``adata``).
        **kwargs
            Passed to :meth:`anndata.AnnData.write`.
        """
        for key in ("save_kwargs", "legacy_mudata_format", "datamodule"):  # scvi-tools' pickle
            if kwargs.pop(key, None):
                raise TypeError(f"save(): {key} is not used (weights are saved with safetensors)")
        write_model(self, dir_path, prefix, overwrite, save_anndata, **kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        allow_pickle: bool = False,
    ):
        """Load a saved model; every file is checked against the manifest first.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData with the training genes (matched by name, in any order; extra genes are
            ignored) and the registered ``obs`` columns; None reads the saved ``adata.h5ad``.
        accelerator, device
            Where to put the model (as in scvi-tools).
        prefix
            Prefix of the file names.
        backup_url
            Where the folder is published (``<url>/manifest.json`` and the files it lists);
            fetched when ``dir_path`` holds no model.
        allow_pickle
            Load a model in the legacy format (scvi-tools' pickled ``model.pt``). A pickle can
            run any code when it is loaded: only for files you trust.

        Raises
        ------
        ModelFileError
            When a file is missing, truncated or altered, or the folder holds no model;
            :class:`LegacyModelError` for a legacy pickle without ``allow_pickle=True``.
        """
        folder, p = Path(os.fspath(dir_path)).expanduser(), _prefix(prefix)
        if not (folder / f"{p}{MANIFEST}").exists():
            legacy = folder / f"{p}{LEGACY_MODEL}"
            if legacy.exists() and not allow_pickle:
                raise LegacyModelError(
                    f"{legacy} is a model in the legacy format: a pickle file, which can run "
                    "arbitrary code when it is loaded, so it is not read. If you trust where it "
                    f"comes from, load it with {cls.__name__}.load(path, adata, "
                    "allow_pickle=True) and save it again to convert it to the safe format"
                )
            if legacy.exists():
                warnings.warn(
                    f"loading {legacy}, a legacy pickle model file (it can run code; allowed by "
                    "allow_pickle=True); save the model again to convert it",
                    UserWarning,
                    stacklevel=2,
                )
                return super().load(  # scvi-tools' own loader
                    os.fspath(folder), adata, accelerator, device, prefix, backup_url
                )
            if backup_url is None:
                raise ModelFileError(
                    f"no {cls.__name__} model at {folder}: neither {p}{MANIFEST} nor "
                    f"{p}{LEGACY_MODEL} is there{_aside_hint(folder)}"
                )
            _download_model(backup_url, folder, p)
        return read_model(cls, folder, adata, accelerator, device, prefix)
