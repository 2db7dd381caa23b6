"""Which path carries a perturbed gene's effect: the effect table for trained genes, the
decoder's network and the retrieval for genes taken as unseen (``effect_network``), one
leave-out draw shared by the graph encoder and the retrieval, and the effects' own learning
rate (``effect_lr_scale``)."""

import pytest
import torch

import pertx_scvi as px
from pertx_scvi.train import PertTXTrainingPlan


@pytest.fixture(scope="module")
def screen_and_graph(tiny_simulation):
    adata, _, network = tiny_simulation
    adata = adata.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    network = network.assign(strength=network["weight"].abs())
    return adata, px.GeneGraph.from_edges(network, weight="strength", sign="weight")


def _model(screen_and_graph, tiny_model, **kwargs):
    adata, graph = screen_and_graph
    torch.manual_seed(0)
    model = px.PertTX(adata, gene_graph=graph, **tiny_model, **kwargs)
    trained = ["REG00", "REG01", "REG02"]
    positions = torch.tensor([model.perturbation_genes.get_loc(g) for g in trained])
    model.module.perturbation_encoder.trained_genes[positions] = True
    return model


def _outputs(model, genes: list[str], d_model: int) -> torch.Tensor:
    """Decoder outputs (len(genes), n_genes) for one source embedding, single-gene sets."""
    module = model.module.eval()
    sets = torch.tensor([[model.perturbation_genes.get_loc(g)] for g in genes])
    z = torch.ones(len(genes), d_model)
    with torch.no_grad():
        return module.predict_next(z, sets, heads=False)["output"]


@pytest.mark.parametrize("effect_network", ["all", "retrieved"])
def test_effect_network_serves_only_retrieved_genes_when_asked(
    screen_and_graph, tiny_model, effect_network
):
    model = _model(screen_and_graph, tiny_model, effect_network=effect_network)
    genes = ["REG00", "REG05"]  # trained, never trained
    before = _outputs(model, genes, tiny_model["d_model"])
    last = [m for m in model.module.decoder.effect.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        last[-1].bias.fill_(0.5)  # the network's residual, zero at initialisation, now 0.5
    after = _outputs(model, genes, tiny_model["d_model"])
    changed = (after - before).abs().amax(1)
    assert changed[1] == pytest.approx(0.5)  # the unseen gene always gets the network
    if effect_network == "all":
        assert changed[0] == pytest.approx(0.5)
    else:  # a trained gene's effect is its table row, whatever the network says
        assert changed[0] == 0


def test_effect_network_is_validated(screen_and_graph, tiny_model):
    with pytest.raises(ValueError, match="effect_network must be 'all' or 'retrieved'"):
        _model(screen_and_graph, tiny_model, effect_network="trained")
    with pytest.raises(ValueError, match="effect_lr_scale must be >= 0"):
        _model(screen_and_graph, tiny_model, effect_lr_scale=-1.0)


def test_one_leave_out_draw_hides_a_gene_from_the_encoder_and_the_retrieval(
    screen_and_graph, tiny_model, monkeypatch
):
    model = _model(screen_and_graph, tiny_model, effect_network="retrieved")
    module = model.module.train()
    encoder, retrieval = module.perturbation_encoder, module.retrieval
    seen = {}
    draw, encode, forward = module._left_out, encoder._encode, retrieval.forward

    def record_draw(gene_sets):
        seen["left_out"] = draw(gene_sets)
        return seen["left_out"]

    def record_encode(seeds, links=None, hidden=None):
        seen["seeds"], seen["hidden"] = seeds, hidden
        return encode(seeds, links, hidden)

    def record_forward(gene_sets, left_out=None):
        seen["retrieval_left_out"] = left_out
        return forward(gene_sets, left_out)

    monkeypatch.setattr(module, "_left_out", record_draw)
    monkeypatch.setattr(encoder, "_encode", record_encode)
    monkeypatch.setattr(retrieval, "forward", record_forward)
    genes = ["REG00", "REG01", "REG02"]
    sets = torch.tensor([[model.perturbation_genes.get_loc(g)] for g in genes] * 20)
    torch.manual_seed(3)
    module.predict_next(torch.randn(len(sets), tiny_model["d_model"]), sets, heads=False)
    left_out = seen["left_out"]
    assert left_out is not None and left_out.shape == (retrieval.n_vocabulary,)
    assert set(left_out.nonzero().squeeze(1).tolist()) <= set(sets.unique().tolist())
    assert torch.equal(seen["hidden"], left_out[seen["seeds"]])
    assert seen["retrieval_left_out"] is left_out
    looked_up = retrieval.looked_up(sets, left_out)
    assert torch.equal(looked_up[:, 0], ~left_out[sets[:, 0]])


def test_default_draws_are_independent(screen_and_graph, tiny_model):
    model = _model(screen_and_graph, tiny_model)
    module = model.module.train()
    sets = torch.tensor([[model.perturbation_genes.get_loc("REG00")]])
    assert module._left_out(sets) is None


def test_effect_lr_scale_gives_the_effects_a_slower_group(screen_and_graph, tiny_model):
    model = _model(screen_and_graph, tiny_model, effect_lr_scale=0.1)
    module = model.module
    plan = PertTXTrainingPlan(module, lr=1e-2, weight_decay=1e-2)
    optimizer = plan._create_optimizer(p for p in module.parameters() if p.requires_grad)
    assert len(optimizer.param_groups) == 2
    rest, effects = optimizer.param_groups
    assert rest["lr"] == pytest.approx(1e-2) and rest["weight_decay"] == pytest.approx(1e-2)
    assert effects["lr"] == pytest.approx(1e-3) and effects["weight_decay"] == 0.0
    ids = {id(p) for p in effects["params"]}
    assert ids == {
        id(module.retrieval.effects),
        id(module.decoder.mean_shift),
        id(module.decoder.self_effect),
    }
    n_params = sum(1 for p in module.parameters() if p.requires_grad)
    assert len(rest["params"]) + len(effects["params"]) == n_params
    default = PertTXTrainingPlan(_model(screen_and_graph, tiny_model).module, lr=1e-2)
    assert len(default._create_optimizer(default.module.parameters()).param_groups) == 1


def test_options_survive_save_and_load(screen_and_graph, tiny_model, tmp_path):
    adata, _ = screen_and_graph
    model = _model(screen_and_graph, tiny_model, effect_network="retrieved", effect_lr_scale=0.25)
    model.train(max_epochs=1, enable_progress_bar=False, holdout_perturbations=["REG05"])
    model.save(tmp_path / "model")
    loaded = px.PertTX.load(tmp_path / "model", adata)
    assert loaded.module.effect_network == "retrieved"
    assert loaded.module.effect_lr_scale == 0.25
