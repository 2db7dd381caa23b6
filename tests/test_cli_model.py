"""``pertx train``, ``pertx predict`` and ``pertx screen`` on a tiny simulated screen."""

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

import pertx_scvi as px
from pertx_scvi import cli

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--threads", "1"]
NOISE = ("Tip:", "LightningDeprecationWarning", "DeprecationWarning", "GPU available", "litlogger")


@pytest.fixture(scope="module")
def files(tiny_screen, tmp_path_factory):
    """The tiny screen as an .h5ad, its controls alone, and a model trained by the command (in
    a subprocess: its whole output is what a user sees)."""
    folder = tmp_path_factory.mktemp("cli")
    data, controls = folder / "screen.h5ad", folder / "controls.h5ad"
    tiny_screen.write_h5ad(data)
    tiny_screen[tiny_screen.obs["perturbation"] == "control"].copy().write_h5ad(controls)
    model = folder / "model"
    command = [sys.executable, "-m", "pertx_scvi.cli", "train", "--data", str(data)]
    command += ["--out", str(model), "--max-epochs", "2", "--cell-type-key", "cell_type"]
    command += ["--holdout", "REG05", "--seed", "0", *TINY_MODEL]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, capture_output=True, text=True, cwd=folder, env=env, timeout=300)
    return {"data": data, "controls": controls, "model": model, "train": done}


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``pertx argv`` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_writes_a_model_without_lightning_noise(files, tiny_screen):
    done = files["train"]
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    noisy = [line for line in output.splitlines() if any(word in line for word in NOISE)]
    assert not noisy, noisy
    assert f"model saved to {files['model']}" in done.stdout
    assert "140 cells x 40 genes" in done.stdout
    model = px.PertTX.load(files["model"], adata=_registered(tiny_screen))
    assert model.is_trained_ and model.holdout_perturbations_ == ["REG05"]
    assert model.registry_["setup_args"]["cell_type_key"] == "cell_type"
    assert model.module.perturbation_encoder.trained_genes.sum() == 5  # REG05 held out


def _registered(adata):
    adata = adata.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata


def test_predict_writes_predicted_cells(files, tmp_path, capsys):
    out = tmp_path / "pred" / "pred.h5ad"
    status, stdout, err = _main(
        capsys,
        "predict",
        "--model",
        files["model"],
        "--data",
        files["controls"],
        "--perturbations",
        "REG00,REG01+REG02",
        "--out",
        out,
        "--n-samples",
        "2",
    )
    assert status == 0, err
    prediction = ad.read_h5ad(out)
    assert prediction.shape == (2 * 2 * 60, 40)
    assert list(prediction.obs["perturbation"].cat.categories) == ["REG00", "REG01+REG02"]
    assert {"mean", "counts"} <= set(prediction.layers)
    assert f"to {out}" in stdout and "60 control cells" in stdout
    # the whole screen as --data: its control cells are the sources by default
    status, stdout, _ = _main(
        capsys,
        *("predict", "--model", files["model"], "--data", files["data"]),
        *("--perturbations", "REG03", "--out", tmp_path / "p2.h5ad"),
    )
    assert status == 0 and ad.read_h5ad(tmp_path / "p2.h5ad").n_obs == 60


def test_screen_writes_a_ranking(files, tmp_path, capsys):
    out, plot = tmp_path / "ranking.csv", tmp_path / "ranking.png"
    status, stdout, err = _main(
        capsys,
        *("screen", "--model", files["model"], "--data", files["data"], "--target", "REG01"),
        *("--out", out, "--plot", plot, "--max-order", "2", "--no-progress"),
    )
    assert status == 0, err
    ranking = pd.read_csv(out)
    assert len(ranking) == 5 + 10  # the 5 trained genes and their pairs
    assert {"rank", "perturbation", "score", "score_se", "score_low", "score_high"} <= set(
        ranking.columns
    )
    assert ranking["rank"].tolist() == list(range(1, 16))
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "ranked 15 candidates by distance" in stdout
    # a target file and a candidate list
    target = tmp_path / "target.h5ad"
    screen = ad.read_h5ad(files["data"])
    screen[screen.obs["perturbation"] == "REG02"].copy().write_h5ad(target)
    status, _, err = _main(
        capsys,
        *("screen", "--model", files["model"], "--data", files["controls"]),
        *("--target", target, "--candidates", "REG00,REG02", "--out", out),
    )
    assert status == 0, err
    assert sorted(pd.read_csv(out)["perturbation"]) == ["REG00", "REG02"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", "{tmp}/m", "--perturbation-key", "guide"], "column 'guide' not found"),
        (["train", "--out", "{tmp}/m", "--control-group", "NT"], "NT"),
        (["train", "--out", "{tmp}/m", "--batch-key", "donor"], "column 'donor' not found"),
        (["predict", "--perturbations", "NOPE", "--out", "{tmp}/p.h5ad"], "'NOPE'"),
        (
            ["predict", "--perturbations", "REG00", "--out", "{tmp}/p.h5ad", "--source-group", "x"],
            "no cells of perturbation = 'x'",
        ),
        (["screen", "--target", "REG99", "--out", "{tmp}/r.csv"], "no cells of that label"),
        (["screen", "--out", "{tmp}/r.csv"], "--target"),
        (
            ["screen", "--target", "REG01", "--candidates", "NOPE", "--out", "{tmp}/r.csv"],
            "unknown to the model: NOPE",
        ),
    ],
)
def test_errors_are_one_clear_line(files, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    extra = ["--data", files["data"]]
    if argv[0] != "train":
        extra += ["--model", files["model"]]
    status, _, err = _main(capsys, *argv, *extra)
    assert status == 2
    assert err.startswith(f"pertx {argv[0]}: error:") and message in err, err
    assert "Traceback" not in err


def test_model_needs_its_registered_columns(files, tmp_path, capsys, tiny_screen):
    """The model was trained with cell_type_key: cells without that column are refused."""
    bare = tiny_screen[tiny_screen.obs["perturbation"] == "control"].copy()
    del bare.obs["cell_type"]
    bare.write_h5ad(tmp_path / "bare.h5ad")
    status, _, err = _main(
        capsys,
        *("predict", "--model", files["model"], "--data", tmp_path / "bare.h5ad"),
        *("--perturbations", "REG00", "--out", tmp_path / "p.h5ad"),
    )
    assert status == 2 and "cell type column 'cell_type'" in err
    status, _, err = _main(
        capsys,
        *("predict", "--model", tmp_path / "absent", "--data", files["controls"]),
        *("--perturbations", "REG00", "--out", tmp_path / "p.h5ad"),
    )
    assert status == 2 and "no such folder" in err


def test_train_with_a_graph_file_screens_graph_genes(
    tiny_screen, tiny_simulation, tmp_path, capsys
):
    """``--graph FILE``: genes of the graph become candidates (embedded through it)."""
    network = tiny_simulation[2]
    graph = tmp_path / "network.csv"
    network.assign(weight=network["weight"].abs()).to_csv(graph, index=False)
    tiny_screen.write_h5ad(tmp_path / "screen.h5ad")
    status, stdout, err = _main(
        capsys,
        *("train", "--data", tmp_path / "screen.h5ad", "--out", tmp_path / "model"),
        *("--graph", graph, "--max-epochs", "1", "--lr", "0.003", *TINY_MODEL, "--no-progress"),
    )
    assert status == 0, err
    assert "perturbation encoder=rgcn" in stdout
    status, stdout, err = _main(
        capsys,
        *("screen", "--model", tmp_path / "model", "--data", tmp_path / "screen.h5ad"),
        *("--target", "REG02", "--out", tmp_path / "r.csv", "--no-progress"),
    )
    assert status == 0, err
    ranking = pd.read_csv(tmp_path / "r.csv")
    assert len(ranking) > 6 and (~ranking["trained"]).any()  # untrained graph genes too


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(command in text for command in ("train", "predict", "screen", "demo"))
