"""Virtual screen (``PertTX.virtual_screen``) on the simulator, where the regulator that drives
cells to each state is known; its plot; its errors."""

import itertools
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import pertx_scvi as px  # noqa: E402

EPOCHS = 10
TRAIN = {"max_epochs": EPOCHS, "lr": 3e-3, "seed": 0}


@pytest.fixture(scope="module")
def screen(simulated, small_model, train_model):
    """The acceptance screen (20 regulators, 5 combinations) and a model trained on all of it."""
    adata = simulated[0].copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata, train_model(adata, small_model, **TRAIN)


def _controls(adata):
    return adata[adata.obs["perturbation"] == "control"]


def _rank(ranking: pd.DataFrame, label: str) -> int:
    return int(ranking.set_index("perturbation").loc[label, "rank"])


def test_known_driver_ranked_first(screen):
    """Target: the cells of one knockout; the screen ranks that regulator first among all 20
    (every strong regulator first; the weak ones, whose knockout barely changes more than the
    gene itself, in the top 3)."""
    adata, model = screen
    sim = adata.uns["simulation"]
    regulators, weak = list(sim["regulators"]), set(sim["weak_regulators"])
    controls = _controls(adata)
    ranks = {}
    for regulator in regulators:
        ranking = model.virtual_screen(controls, target=regulator)
        assert len(ranking) == len(regulators)  # default: every gene the model can embed
        ranks[regulator] = _rank(ranking, regulator)
    strong = {r: k for r, k in ranks.items() if r not in weak}
    assert all(k == 1 for k in strong.values()), strong
    assert all(ranks[r] <= 3 for r in weak), ranks


def test_ranking_table(screen):
    adata, model = screen
    driver = "REG02"
    target = adata[adata.obs["perturbation"] == driver].copy()  # a target AnnData
    before = (adata.obs.copy(), adata.X.copy(), target.obs.copy())
    ranking = model.virtual_screen(_controls(adata), target=target, candidates=["REG00", "REG02"])
    assert list(ranking.columns) == [
        "rank",
        "perturbation",
        "n_genes",
        "trained",
        "score",
        "score_se",
        "score_low",
        "score_high",
        "distance_gain",
        "cosine",
        "effect_norm",
    ]
    assert ranking["perturbation"].tolist() == [driver, "REG00"]
    assert ranking["rank"].tolist() == [1, 2]
    assert ranking["trained"].all() and (ranking["n_genes"] == 1).all()
    assert np.allclose(ranking["score"], ranking["distance_gain"])
    assert (ranking["score_se"] > 0).all()
    assert (ranking["score_low"] <= ranking["score"]).all()
    assert (ranking["score"] <= ranking["score_high"]).all()
    assert ranking["score"].iloc[0] > 0.2  # closes a good share of the way to the target
    assert ranking.attrs["n_target_cells"] == target.n_obs
    assert ranking.attrs["n_source_cells"] == 128  # max_cells of the 300 controls
    assert ranking.attrs["candidates_per_second"] > 0
    # the same target named as a group of the registered data, another spelling of it
    by_label = model.virtual_screen(
        _controls(adata), target="REG02+ctrl", candidates=["REG00", "REG02"]
    )
    pd.testing.assert_frame_equal(by_label, ranking, check_like=False)
    # seeded: the same call gives the same table; inputs unchanged
    again = model.virtual_screen(_controls(adata), target=target, candidates=["REG00", "REG02"])
    pd.testing.assert_frame_equal(again, ranking)
    pd.testing.assert_frame_equal(adata.obs, before[0])
    assert (adata.X != before[1]).nnz == 0
    pd.testing.assert_frame_equal(target.obs, before[2])
    cosine = model.virtual_screen(target=driver, candidates=["REG00", "REG02"], score="cosine")
    assert cosine["perturbation"].iloc[0] == driver
    assert np.allclose(cosine["score"], cosine["cosine"])


def test_pairs_rank_the_driving_combination_first(screen):
    """Target: the cells of a trained two-gene knockout; among the 20 singles and their 190
    pairs, that pair ranks first (for each of the simulator's 5 combinations)."""
    adata, model = screen
    combinations = list(adata.uns["simulation"]["combinations"])
    assert len(combinations) == 5
    for combination in combinations:
        ranking = model.virtual_screen(_controls(adata), target=combination, max_order=2)
        assert len(ranking) == 20 + 20 * 19 // 2
        assert (ranking["n_genes"] == 2).sum() == 190
        assert ranking["perturbation"].iloc[0] == combination, ranking.head(3)
    # max_pairs: only pairs of the best-ranked singles (k (k - 1) / 2 <= 10: k = 5)
    small = model.virtual_screen(
        _controls(adata), target=combinations[0], max_order=2, max_pairs=10
    )
    singles = small[small["n_genes"] == 1].sort_values("rank")["perturbation"].tolist()
    pairs = small[small["n_genes"] == 2]["perturbation"].tolist()
    assert len(pairs) == 10 and small.attrs["pairs_from_top_singles"] == 5
    assert {g for p in pairs for g in p.split("+")} == set(singles[:5])


def test_screen_errors(screen):
    adata, model = screen
    controls = _controls(adata)
    with pytest.raises(ValueError, match=r"NOT_A_GENE.*OTHER"):
        model.virtual_screen(controls, target="REG01", candidates=["REG01", "NOT_A_GENE+OTHER"])
    with pytest.raises(ValueError, match="name no gene"):
        model.virtual_screen(controls, target="REG01", candidates=["control"])
    with pytest.raises(ValueError, match="needs a target"):
        model.virtual_screen(controls)
    with pytest.raises(ValueError, match="no cells of 'REG99'"):
        model.virtual_screen(controls, target="REG99")
    with pytest.raises(KeyError, match="not_a_column"):
        model.virtual_screen(controls, target="x", target_key="not_a_column")
    with pytest.raises(ValueError, match="phenotype_keys"):
        model.virtual_screen(controls, phenotype="phenotype")
    with pytest.raises(ValueError, match="max_order"):
        model.virtual_screen(controls, target="REG01", max_order=3)
    with pytest.raises(ValueError, match="score"):
        model.virtual_screen(controls, target="REG01", score="closest")
    with pytest.raises(ValueError, match="lacks 50 of the 100 genes"):
        model.virtual_screen(controls[:, :50], target="REG01")


def test_screen_plot(screen, tmp_path):
    adata, model = screen
    ranking = model.virtual_screen(_controls(adata), target="REG03")
    path = tmp_path / "screen.png"
    ax = px.pl.virtual_screen(ranking, top=5, save=path, highlight="REG03")
    assert isinstance(ax, Axes)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ticks = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()], strict=True))
    assert len(ticks) == 5 and ticks[max(ticks)] == ranking["perturbation"].iloc[0]  # best on top
    with pytest.raises(ValueError, match="score"):
        px.pl.virtual_screen(ranking.drop(columns="score"))
    plt.close("all")


def test_screen_speed(screen, capsys):
    """Candidates ranked per second on 1,000 candidates (pairs and triples of the 20
    regulators), default settings (128 source cells, 2 Monte Carlo draws each)."""
    adata, model = screen
    regulators = list(adata.uns["simulation"]["regulators"])
    labels = ["+".join(c) for n in (2, 3) for c in itertools.combinations(regulators, n)]
    started = time.perf_counter()
    ranking = model.virtual_screen(_controls(adata), target="REG05", candidates=labels[:1000])
    seconds = time.perf_counter() - started
    assert len(ranking) == 1000
    with capsys.disabled():
        print(
            f"\nvirtual_screen: 1000 candidates x {adata.n_vars} genes in {seconds:.1f} s "
            f"({1000 / seconds:.0f} candidates per second)"
        )


@pytest.mark.slow
def test_phenotype_screen(simulated, small_model, train_model):
    """Rank by the predicted phenotype change (no target): agrees with the simulator's true
    phenotype shift of each knockout."""
    adata = simulated[0].copy()
    px.PertTX.setup_anndata(
        adata,
        perturbation_key="perturbation",
        control_group="control",
        phenotype_keys=["phenotype"],
    )
    model = train_model(adata, small_model, **TRAIN)
    sim = adata.uns["simulation"]
    genes, weights = list(sim["phenotype_genes"]), np.asarray(sim["phenotype_weights"])
    truth = (sim["log_fold_change"][genes] * weights).sum(1)
    ranking = model.virtual_screen(phenotype="phenotype")
    predicted = ranking.set_index("perturbation")["phenotype_shift"]
    regulators = list(sim["regulators"])
    assert ranking["perturbation"].iloc[0] == truth[regulators].idxmax()
    assert spearmanr(predicted[regulators], truth[regulators]).statistic > 0.7
    lowest = model.virtual_screen(phenotype="phenotype", maximize=False)
    assert lowest["perturbation"].iloc[0] == predicted.idxmin()
    both = model.virtual_screen(target="REG01", phenotype="phenotype")
    assert {"distance_gain", "phenotype_shift"} <= set(both.columns)
    assert both.attrs["score"] == "distance"
