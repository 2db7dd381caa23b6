"""Training on several processes: DDP on CPU (gloo) with two ranks, run as a script (Lightning's
``ddp`` strategy runs the script again for rank 1)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_SIMULATION
from safetensors.torch import load_file

import pertx_scvi as px
from pertx_scvi.train._checkpoint import CHECKPOINT_FILE, read_checkpoint

SCRIPT = textwrap.dedent(
    """
    import json
    import math
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    import pertx_scvi as px

    out = Path(sys.argv[1])
    adata = px.datasets.simulate(**json.loads(sys.argv[2]))[0]
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    torch.manual_seed(0)
    model = px.PertTX(adata, d_model=16, n_layers=1, n_heads=2, d_hidden=32, dropout=0.1)
    model.train(
        max_epochs=2,
        batch_size=16,
        validation_size=0.2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        checkpoint_dir=out / "checkpoint",
        enable_progress_bar=False,
    )
    trainer = model.trainer
    rank = trainer.global_rank
    info = {
        "world_size": trainer.world_size,
        "history": {k: [float(x) for x in v.iloc[:, 0]] for k, v in model.history.items()},
        "epochs": [int(e) for e in model.history["train_loss"].index],
        "batches": int(trainer.num_training_batches),
        "batches_all_ranks": math.ceil(len(model.train_indices) / 16),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    save_file(weights, out / f"rank{rank}.safetensors")
    if trainer.is_global_zero:
        model.save(out / "model", save_anndata=True)
    """
)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)  # a fresh group; Lightning picks a free port
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), json.dumps(TINY_SIMULATION)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Every rank has rank 0's history, every epoch of it.
    assert ranks[0]["epochs"] == [0, 1]
    assert ranks[1]["history"] == ranks[0]["history"]
    assert {"train_loss", "validation_loss"} <= ranks[0]["history"].keys()
    # Each rank trained on its own share of the batches (the full order split between ranks).
    assert [r["batches"] for r in ranks] == [ranks[0]["batches_all_ranks"] // 2] * 2
    # DDP kept the weights alike on every rank.
    weights = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0, msg=name)
    # The model saved by rank 0 loads, with those weights and the history.
    model = px.PertTX.load(tmp_path / "model", accelerator="cpu")
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, weights[0][name], rtol=0, atol=0, msg=name)
    assert len(model.history["train_loss"]) == 2
    # The checkpoint (written by rank 0) holds every rank's random generators.
    checkpoint = read_checkpoint(tmp_path / "checkpoint" / CHECKPOINT_FILE)
    assert len(checkpoint["callbacks"]["PertTXEpochCheckpoint"]["rng"]) == 2


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_child_process_strategies_are_refused(tiny_screen, tiny_model, strategy):
    adata = tiny_screen.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    model = px.PertTX(adata, **tiny_model)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match='use strategy="ddp"'):
        model.train(max_epochs=1, accelerator="cpu", devices=2, strategy=strategy)
    assert not model.is_trained_
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, before[name]), name
