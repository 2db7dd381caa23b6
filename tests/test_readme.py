"""The README's Python example runs as written (on a small subset of the real screen)."""

import re
from pathlib import Path

import numpy as np
import pytest

import pertx_scvi as px

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
@pytest.mark.realdata
def test_readme_python_example_runs(data_dir, tmp_path, monkeypatch):
    full = px.datasets.papalexi2021(data_dir)
    labels = full.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    keep = []
    for label, n in (("control", 300), ("STAT1", 80), ("IFNGR2", 80), ("IRF1", 80), ("JAK2", 80)):
        keep += list(rng.choice(np.flatnonzero(labels == label), n, replace=False))
    subset = full[np.sort(keep)].copy()
    monkeypatch.setattr(px.datasets, "papalexi2021", lambda *args, **kwargs: subset.copy())
    monkeypatch.setenv("PERTX_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(README.read_text())
    assert blocks, "README has no python code block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    report, pred = namespace["report"], namespace["pred"]
    assert set(report["perturbation"]) == {"STAT1", "IFNGR2"}
    assert {"PertTX", "train_mean_knockdown"} <= set(report["method"])
    assert set(pred.obs["perturbation"]) == {"STAT1", "IRF1+JAK2"}
    assert (tmp_path / "run1").is_dir()
