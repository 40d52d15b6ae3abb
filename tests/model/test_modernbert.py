"""The ModernBERT-shaped options (rotary theta, no first-block attention norm, bias-free LayerNorms, head transform),
the `modernbert` preset, and `to_hf_modernbert` against transformers' own ModernBERT."""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertForMaskedLM, ModernBertModel

from crammer.errors import CrammerError
from crammer.model import CrammedBertForMaskedLM, CrammedBertModel, make_config
from crammer.model.modernbert import to_hf_modernbert
from crammer.train.config import make_pretrain_config

SMALL = ["hidden_size=64", "num_hidden_layers=3", "num_attention_heads=2", "intermediate_size=256"]


def _perturbed(model):
    """Weights away from their init (LayerNorms not 1/0), so a swapped or dropped tensor shows in the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _batch(vocab: int, length: int = 40):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 3:] = 0
    return ids, mask


def test_modernbert_preset_is_crammed_size_in_modernbert_shape():
    config = make_config("modernbert", 32768)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (768, 16, 3072)
    model = CrammedBertForMaskedLM(make_config("modernbert", 300, SMALL))
    first, second = model.bert.layers[0], model.bert.layers[1]
    assert isinstance(first.attn_norm, torch.nn.Identity) and isinstance(second.attn_norm, torch.nn.LayerNorm)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 3 + 2 + 1 + 1  # embeddings, ffn x3, attention x2, final, head transform
    assert all(m.bias is None and m.eps == 1e-5 for m in norms)
    assert model.bert.embeddings.position_embeddings is None and not isinstance(model.head_transform,
                                                                                torch.nn.Identity)
    assert make_pretrain_config("modernbert").model == "modernbert"


def test_the_new_options_change_the_outputs():
    ids, mask = _batch(300)
    base = make_config("modernbert", 300, SMALL)
    torch.manual_seed(0)
    model = _perturbed(CrammedBertModel(base))
    reference = model(ids, mask).last_hidden_state
    other_theta = CrammedBertModel(make_config("modernbert", 300, [*SMALL, "rope_theta=160000"])).eval()
    other_theta.load_state_dict(model.state_dict())
    assert (other_theta(ids, mask).last_hidden_state - reference).abs().max() > 1e-3
    with_norm = CrammedBertModel(make_config("modernbert", 300, [*SMALL, "first_layer_attn_norm=true"])).eval()
    missing = with_norm.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert missing == ["layers.0.attn_norm.weight"]
    with torch.no_grad():
        with_norm.layers[0].attn_norm.weight.fill_(1.0)
    assert (with_norm(ids, mask).last_hidden_state - reference).abs().max() > 1e-3


@pytest.mark.parametrize("override, message", [("rope_theta=0", "rope_theta"),
                                               ("norm_scheme=post", "first_layer_attn_norm=False needs")])
def test_invalid_combinations_are_refused(override, message):
    with pytest.raises(CrammerError, match=message):
        make_config("modernbert", 300, [*SMALL, override])


@pytest.mark.parametrize("extra", [[], ["use_bias=true", "norm_bias=true", "hidden_act=gelu_pytorch_tanh",
                                        "rope_theta=500", "layer_norm_eps=1e-12"]])
def test_to_hf_modernbert_matches_transformers_modernbert(extra):
    """Biases, norm biases, another activation, theta and eps all map onto ModernBERT's settings."""
    torch.manual_seed(0)
    ours = _perturbed(CrammedBertForMaskedLM(make_config("modernbert", 300, [*SMALL, *extra,
                                                                             "max_position_embeddings=64"])))
    hf, notes = to_hf_modernbert(ours)
    assert type(hf) is ModernBertForMaskedLM and notes == []
    assert hf.decoder.weight is hf.model.embeddings.tok_embeddings.weight  # tied, as ours
    for length in (8, 64):
        ids, mask = _batch(300, length)
        with torch.no_grad():
            a, b = ours(ids, mask).logits, hf(input_ids=ids, attention_mask=mask).logits
        assert (a - b)[mask.bool()].abs().max() < 1e-5
    encoder = _perturbed(CrammedBertModel(ours.config, add_pooling_layer=False))
    hf_encoder, _ = to_hf_modernbert(encoder)
    assert type(hf_encoder) is ModernBertModel
    ids, mask = _batch(300)
    with torch.no_grad():
        diff = encoder(ids, mask).last_hidden_state - hf_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert diff[mask.bool()].abs().max() < 1e-5


def test_a_pooler_or_another_architecture_is_refused():
    config = make_config("modernbert", 300, SMALL)
    with pytest.raises(CrammerError, match="no pooler"):
        to_hf_modernbert(CrammedBertModel(config))  # BERT's dense+tanh pooler
    with pytest.raises(CrammerError, match=r"position_embedding='learned' \(ModernBERT: 'rotary'\)"):
        to_hf_modernbert(CrammedBertForMaskedLM(make_config("modernbert", 300, [*SMALL,
                                                                                 "position_embedding=learned"])))
