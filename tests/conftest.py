import os
from pathlib import Path

import pytest

_DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder with the shared real data (``$PERTX_DATA_DIR`` or ``../shared/data``); skips when absent."""
    path = Path(os.environ.get("PERTX_DATA_DIR", _DEFAULT_DATA_DIR))
    if not (path / "perturb").is_dir():
        pytest.skip(f"real data not found at {path}; set PERTX_DATA_DIR")
    return path
