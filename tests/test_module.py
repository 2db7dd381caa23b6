"""Torch-level pieces: attention backends, tokenizer, perturbation pooling, decoder start point."""

import pytest
import torch

from pertx_scvi._constants import BATCH_KEYS
from pertx_scvi.module import PertTXModule, TransformerEncoder, flash_attn_available
from pertx_scvi.module._embeddings import BinnedValueEncoder, ExpressionTokenizer, select_tokens


def _module(**kwargs):
    torch.manual_seed(0)
    self_index = torch.tensor([0, 1, -1, 3])
    args = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_hidden": 32, "dropout": 0.0}
    return PertTXModule(
        n_genes=10, n_perturbation_genes=4, self_gene_index=self_index, **{**args, **kwargs}
    )


@pytest.mark.parametrize("padding", [False, True])
def test_native_and_sdpa_attention_agree(padding):
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 4, 2, 32, dropout=0.0, backend="sdpa").eval()
    x = torch.randn(3, 7, 16)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    if padding:
        mask[0, 5:] = True
    sdpa = encoder(x, mask if padding else None)
    encoder.set_backend("native")
    native = encoder(x, mask if padding else None)
    assert encoder.backend == "native"
    torch.testing.assert_close(sdpa[~mask], native[~mask], rtol=1e-4, atol=1e-5)


def test_unknown_backend_and_missing_flash_are_errors():
    with pytest.raises(ValueError, match="'cuda-magic'"):
        TransformerEncoder(16, 2, 1, 32, backend="cuda-magic")
    if not flash_attn_available():
        with pytest.raises(ImportError, match="flash-attn"):
            TransformerEncoder(16, 2, 1, 32, backend="flash")
        assert TransformerEncoder(16, 2, 1, 32, backend="auto").backend == "sdpa"


@pytest.mark.gpu
@pytest.mark.skipif(not flash_attn_available(), reason="needs CUDA and flash-attn")
def test_flash_matches_sdpa_on_gpu():
    torch.manual_seed(0)
    encoder = TransformerEncoder(64, 4, 2, 128, dropout=0.0, backend="sdpa").cuda().eval()
    x = torch.randn(4, 33, 64, device="cuda")
    mask = torch.zeros(4, 33, dtype=torch.bool, device="cuda")
    mask[1, 20:] = True
    reference = encoder(x, mask)
    encoder.set_backend("flash")
    flash = encoder(x, mask)
    torch.testing.assert_close(flash[~mask], reference[~mask], rtol=2e-2, atol=2e-2)


def test_select_tokens_keeps_expressed_genes_first():
    values = torch.zeros(4, 50)
    values[:, :5] = torch.rand(4, 5) + 0.1
    chosen = select_tokens(values, 12)
    assert chosen.shape == (4, 12)
    for row in chosen:
        assert set(range(5)) <= set(row.tolist())
        assert len(set(row.tolist())) == 12


def test_binned_values_are_per_cell_quantiles():
    values = torch.tensor([[0.0, 1.0, 3.0, 0.0, 2.0, 4.0]])
    bins = BinnedValueEncoder(8, n_bins=5).bins(values)
    assert bins.tolist() == [[0, 1, 3, 0, 2, 4]]
    # Depth does not matter: scaling a cell keeps its bins.
    assert torch.equal(BinnedValueEncoder(8, 5).bins(values * 7), bins)


@pytest.mark.parametrize("encoding", ["continuous", "binned"])
def test_tokenizer_on_selected_genes(encoding):
    tokenizer = ExpressionTokenizer(30, 8, value_encoding=encoding)
    values = torch.rand(2, 30)
    genes = select_tokens(values, 10)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 0] = True
    tokens = tokenizer(values, mask, genes)
    assert tokens.shape == (2, 11, 8)
    # A masked token carries only its gene identity plus the mask vector.
    expected = tokenizer.mask_vector + tokenizer.gene_embedding(genes[:, 0])
    torch.testing.assert_close(tokens[:, 1], expected)


def test_perturbation_embedding_is_order_free_and_control_is_zero():
    module = _module()
    encoder = module.perturbation_encoder
    ab = encoder(torch.tensor([[0, 2], [2, 0], [-1, -1]]))
    torch.testing.assert_close(ab[0], ab[1])
    assert torch.all(ab[2] == 0)


def test_untrained_decoder_predicts_combinations_additively():
    """Interaction terms start at zero: the effect of A+B is the sum of the effects of A and B."""
    module = _module().eval()
    for parameter in (module.decoder.mean_shift,):
        parameter.data.normal_()
    with torch.no_grad():
        module.decoder.effect[-1].weight.normal_(std=0.1)
        z = torch.randn(3, 16)
        control = module.decode(z, torch.tensor([[-1, -1]] * 3))
        a = module.decode(z, torch.tensor([[0, -1]] * 3)) - control
        b = module.decode(z, torch.tensor([[2, -1]] * 3)) - control
        ab = module.decode(z, torch.tensor([[0, 2]] * 3)) - control
    torch.testing.assert_close(ab, a + b, rtol=1e-4, atol=1e-5)


def test_self_term_hits_only_measured_targets():
    module = _module()
    module.decoder.self_effect.data.fill_(-2.0)
    term = module.decoder.self_term(torch.tensor([[0, 2], [3, -1]]), 10)
    assert term[0, 0] == -2.0 and term[0].sum() == -2.0  # gene 2 is not measured
    assert term[1, 3] == -2.0 and term[1].sum() == -2.0


def _pair_batch(n_cells=6, n_genes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(2 * n_cells, n_genes, generator=generator) * 3)
    return {
        BATCH_KEYS.SOURCE_X: counts[:n_cells],
        BATCH_KEYS.TARGET_X: counts[n_cells:],
        BATCH_KEYS.PERTURBATION_GENES: torch.tensor([[0, -1], [2, 3]] * (n_cells // 2)),
    }


def _loss_terms(module, tensors):
    inference = module.inference(**module._get_inference_input(tensors))
    generative = module.generative(**module._get_generative_input(tensors, inference))
    output = module.loss(tensors, inference, generative)
    return inference, {**output.reconstruction_loss, **output.extra_metrics}


@pytest.mark.parametrize(("mlm_cell", "sequences_per_pair"), [("source", 1), ("target", 2)])
def test_masked_cell_sets_encoder_passes(mlm_cell, sequences_per_pair):
    """Masking the source cell encodes one sequence per pair; masking the target two."""
    module = _module(mlm_cell=mlm_cell)
    seen = []
    module.encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    tensors = _pair_batch()
    inference, terms = _loss_terms(module, tensors)
    assert seen == [6 * sequences_per_pair]
    assert set(terms) == {"next_cell", "mlm", "reconstruction"}
    assert all(torch.isfinite(value).all() for value in terms.values())
    # The masked-expression target is the masked cell's own values.
    masked = tensors[BATCH_KEYS.SOURCE_X if mlm_cell == "source" else BATCH_KEYS.TARGET_X]
    expected = torch.log1p(masked / masked.sum(-1, keepdim=True).clamp(min=1) * 1e4)
    torch.testing.assert_close(inference["mlm_values"], expected)


def test_max_genes_tokenises_a_subset_and_decodes_every_gene():
    module = _module(max_genes=4)
    tensors = _pair_batch()
    inference, terms = _loss_terms(module, tensors)
    assert inference["mlm_prediction"].shape == (6, 4)
    assert all(torch.isfinite(value).all() for value in terms.values())
    module.eval()
    with torch.no_grad():
        output = module.decode(
            module.embed_cells(tensors[BATCH_KEYS.SOURCE_X]), torch.tensor([[0, -1]] * 6)
        )
        again = module.embed_cells(tensors[BATCH_KEYS.SOURCE_X])
    assert output.shape == (6, 10)
    # Inference picks the same tokens every time: the embedding is deterministic.
    torch.testing.assert_close(module.embed_cells(tensors[BATCH_KEYS.SOURCE_X]), again)


def test_inference_token_choice_prefers_the_most_expressed_genes():
    values = torch.tensor([[0.0, 3.0, 0.0, 1.0, 2.0, 0.0, 0.5, 0.0]])
    chosen = select_tokens(values, 3, random=False)
    assert set(chosen[0].tolist()) == {1, 4, 3}
    assert torch.equal(
        select_tokens(values, 6, random=False), select_tokens(values, 6, random=False)
    )
    assert {1, 3, 4, 6} <= set(select_tokens(values, 6, random=False)[0].tolist())


def test_zero_reconstruction_weight_removes_head_and_term():
    module = _module(reconstruction_weight=0.0)
    assert module.reconstruction_head is None
    _, terms = _loss_terms(module, _pair_batch())
    assert "reconstruction" not in terms
