"""The additive path starts at the observed effects: trained genes at their own effect (so
combinations of trained genes at the additive baseline), untrained ones at the train mean plus
the knockdown of a measured target, before any optimiser step."""

import numpy as np
import pytest
import torch

import pertx_scvi as px
from pertx_scvi.module import link_space_effect


def _model(screen, tiny_model, **kwargs):
    adata = screen.copy()
    px.PertTX.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    return adata, px.PertTX(adata, **tiny_model, **kwargs)


def _started(model, holdout):
    datamodule = model._make_datamodule(holdout, validation_size=0.0, batch_size=32, seed=0)
    trained = torch.from_numpy(datamodule.trained_gene_positions())
    model.module.perturbation_encoder.trained_genes[trained] = True
    return datamodule, model._warm_start_effects(datamodule, seed=0)


def _additive_output(model, gene: str) -> torch.Tensor:
    """Warm-started output shift of one gene: mean shift + knockdown + its table row."""
    decoder, retrieval = model.module.decoder, model.module.retrieval
    position = model.perturbation_genes.get_loc(gene)
    out = decoder.mean_shift.detach().clone()
    own = int(decoder.self_gene_index[position])
    if own >= 0:
        out[own] += decoder.self_effect.detach()
    return out + retrieval.effects.detach()[int(retrieval.row_of[position])]


def test_trained_genes_start_at_their_observed_effect(tiny_screen, tiny_model):
    adata, model = _model(tiny_screen, tiny_model)
    datamodule, n_started = _started(model, ["REG05"])
    assert n_started == 5  # REG00-REG04 trained alone; REG05 held out
    cells, train = datamodule.cells, datamodule.train_idx
    gene_of = {g: model.perturbation_genes.get_loc(g) for g in ("REG00", "REG01")}
    for gene, position in gene_of.items():
        labels = cells.label_codes[train]
        code = next(
            c
            for c in np.unique(labels)
            if [g for g in cells.label_gene_sets[c] if g >= 0] == [position]
        )
        members = train[labels == code]
        # every training cell of the label (at most 256 are drawn: this screen has 10)
        sources = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "control")
        observed = link_space_effect(
            model.module.input_values(cells.dense(members))[0],
            model.module.input_values(cells.dense(sources))[0],
            model.module.likelihood,
        )
        started = _additive_output(model, gene)
        # same perturbed cells; controls drawn with replacement vs all controls
        assert torch.corrcoef(torch.stack([started, observed]))[0, 1] > 0.9


def test_untrained_genes_start_at_the_train_mean(tiny_screen, tiny_model):
    _, model = _model(tiny_screen, tiny_model)
    _started(model, ["REG05"])
    retrieval = model.module.retrieval
    held = int(retrieval.row_of[model.perturbation_genes.get_loc("REG05")])
    assert torch.count_nonzero(retrieval.effects[held]) == 0
    remainders = retrieval.effects.detach()[retrieval.effects.detach().abs().sum(1) > 0]
    # the trained genes' remainders are centred (the mean is the decoder's mean shift), except
    # at the measured target genes, where the shared knockdown is taken out too
    own = model.module.decoder.self_gene_index
    targets = own[own >= 0]
    others = torch.ones(remainders.shape[1], dtype=torch.bool)
    others[targets] = False
    assert remainders.mean(0)[others].abs().max() < 1e-5
    assert model.module.decoder.mean_shift.abs().sum() > 0


def test_warm_start_runs_once_and_can_be_switched_off(tiny_screen, tiny_model):
    _, model = _model(tiny_screen, tiny_model)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    trained = model.module.retrieval.effects.detach().clone()
    assert _started(model, None)[1] == 0  # a trained model is left as it is
    torch.testing.assert_close(model.module.retrieval.effects.detach(), trained)

    _, cold = _model(tiny_screen, tiny_model, effect_warm_start=False)
    cold.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert cold.module.decoder.mean_shift.abs().max() < 0.1  # one epoch from zero


@pytest.mark.parametrize("likelihood", ["nb", "mse"])
def test_link_space_effect(likelihood):
    control = torch.log1p(torch.tensor([[10.0, 0.0, 5.0], [30.0, 0.0, 5.0]]))
    perturbed = torch.log1p(torch.tensor([[40.0, 0.0, 5.0], [40.0, 0.0, 5.0]]))
    effect = link_space_effect(perturbed, control, likelihood)
    assert effect[1] == 0 and abs(effect[2]) < 1e-6 and effect[0] > 0
    if likelihood == "nb":
        torch.testing.assert_close(
            effect[0], torch.log1p(torch.tensor(40.0)) - torch.log1p(torch.tensor(20.0))
        )
