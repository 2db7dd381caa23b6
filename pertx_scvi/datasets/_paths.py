"""Where the real-data files are looked for."""

from __future__ import annotations

import os
from pathlib import Path

import pooch

DATA_DIR_ENV = "PERTX_DATA_DIR"
"""Environment variable naming the data folder (the folder that contains ``perturb/``)."""


def cache_dir() -> Path:
    """Return the per-user cache folder of ``pertx_scvi``.

    Returns
    -------
    pathlib.Path
        ``pooch.os_cache("pertx_scvi")``, for example ``~/.cache/pertx_scvi`` on Linux. The folder
        is not created.
    """
    return Path(pooch.os_cache("pertx_scvi"))


def data_dir() -> Path:
    """Return the data folder that files are read from when no explicit path is given.

    Returns
    -------
    pathlib.Path
        ``$PERTX_DATA_DIR`` when that environment variable is set (and not empty), otherwise the
        cache folder (:func:`cache_dir`). The folder may not exist.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return cache_dir()


def _candidates(relative_path: str, path: str | os.PathLike | None) -> list[Path]:
    """List the places searched for ``relative_path``, in order."""
    rel = Path(relative_path)
    if path is not None:
        explicit = Path(path).expanduser()
        # An explicit folder may be the data folder itself or the sub-folder holding the file.
        if not explicit.is_dir():
            return [explicit]
        return list(dict.fromkeys([explicit / rel, explicit / rel.name]))
    places = []
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        places.append(Path(env).expanduser() / rel)
    places.append(cache_dir() / rel)
    return places


def find_data_file(relative_path: str, path: str | os.PathLike | None = None) -> Path:
    """Find a data file by its path relative to the data folder.

    Parameters
    ----------
    relative_path
        Path of the file inside the data folder, e.g. ``"perturb/papalexi2021_thp1_subset.h5ad"``.
    path
        Explicit location: the file itself, the data folder (holding ``relative_path``), or the
        folder that directly holds the file. When given, only this location is searched.
        When ``None``, the file is looked for under ``$PERTX_DATA_DIR`` and then under the cache
        folder (``pooch.os_cache("pertx_scvi")``).

    Returns
    -------
    pathlib.Path
        The first existing candidate.

    Raises
    ------
    FileNotFoundError
        When the file is in none of the searched places; the message lists them and says how to
        make the file available.
    """
    places = _candidates(relative_path, path)
    for place in places:
        if place.is_file():
            return place
    searched = "\n".join(f"  - {p}" for p in places)
    hint = (
        f"Pass `path=` (the file or the folder holding `{relative_path}`), set "
        f"${DATA_DIR_ENV} to the folder that contains `{Path(relative_path).parts[0]}/`, "
        f"or copy the file to {cache_dir() / relative_path}."
    )
    if path is not None:
        hint = f"Check the `path` argument. Without it, ${DATA_DIR_ENV} and the cache are searched."
    raise FileNotFoundError(f"Could not find `{relative_path}`. Searched:\n{searched}\n{hint}")
