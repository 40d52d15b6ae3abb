"""Presets, overrides, parameter counts and FLOPs of the crammed BERT config."""

from __future__ import annotations

import pytest

from crammer.errors import CrammerError
from crammer.model import (
    MODEL_PRESETS,
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    count_parameters,
    make_config,
    training_flops_per_token,
)


def test_presets_build_valid_configs():
    assert {"crammed-bert", "tiny", "small", "bert-base"} <= set(MODEL_PRESETS)
    for name in MODEL_PRESETS:
        config = make_config(name, vocab_size=1000)
        assert isinstance(config, CrammedBertConfig) and config.vocab_size == 1000


def test_crammed_bert_preset_is_the_paper_recipe():
    c = make_config("crammed-bert", 32768)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (16, 768, 12, 3072)
    assert c.max_position_embeddings == 128
    assert (c.norm_scheme, c.ffn_type, c.position_embedding, c.use_bias) == ("pre", "glu", "scaled_sinusoidal", False)
    assert c.hidden_dropout_prob == 0.0 and c.attention_probs_dropout_prob == 0.0
    b = make_config("bert-base", 30522)
    assert (b.norm_scheme, b.ffn_type, b.position_embedding, b.use_bias, b.type_vocab_size) == (
        "post", "mlp", "learned", True, 2)
    assert b.num_hidden_layers == 12 and b.mlm_head_transform


def test_original_names_the_exact_bert_architecture():
    assert make_config("original", 30522).to_dict() == make_config("bert-base", 30522).to_dict()


def test_overrides_are_typed():
    c = make_config("tiny", 100, ["num_hidden_layers=3", "use_bias=true", "hidden_dropout_prob=0.1",
                                  "position_embedding=rotary", "pad_token_id=none", "max_position_embeddings=2e2"])
    assert c.num_hidden_layers == 3 and c.use_bias is True and c.hidden_dropout_prob == 0.1
    assert c.position_embedding == "rotary" and c.pad_token_id is None and c.max_position_embeddings == 200


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_layers=4", "unknown model config key 'num_layers'; valid keys: attention_probs_dropout_prob"),
        ("num_hidden_layers=two", "model config num_hidden_layers: expected an integer, got 'two'"),
        ("num_hidden_layers=2.5", "expected an integer"),
        ("use_bias=maybe", "model config use_bias: expected true/false"),
        ("hidden_size", "expected key=value"),
        ("norm_scheme=middle", "norm_scheme='middle' is not one of pre, post"),
        ("num_attention_heads=3", "not divisible by num_attention_heads=3"),
        ("hidden_size=none", "hidden_size: cannot be None"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(CrammerError) as info:
        make_config("tiny", 100, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(CrammerError, match="unknown model preset 'huge'; choose from: bert-base, crammed-bert"):
        make_config("huge", 100)


def test_default_model_has_119_6m_parameters_with_tied_embedding_counted_once():
    model = CrammedBertForMaskedLM(make_config("crammed-bert", 32768))
    assert model.decoder.weight is model.bert.embeddings.word_embeddings.weight
    total = count_parameters(model)
    assert abs(total - 119.6e6) < 0.05e6, total
    embedding = 32768 * 768
    assert count_parameters(model, include_embeddings=False) == total - embedding - 1  # minus the position scale
    assert total == sum(p.numel() for p in model.parameters())


def test_untied_decoder_counts_separately():
    config = make_config("tiny", 300, ["tie_word_embeddings=false"])
    model = CrammedBertForMaskedLM(config)
    assert model.decoder.weight is not model.bert.embeddings.word_embeddings.weight
    tied = CrammedBertForMaskedLM(make_config("tiny", 300))
    assert count_parameters(model) == count_parameters(tied) + 300 * 128


def test_training_flops_per_token_formula():
    config = make_config("small", 1000)
    model = CrammedBertForMaskedLM(config)  # the MLM's encoder: what pretraining trains (no pooler)
    n_body = count_parameters(model.bert, include_embeddings=False)
    d, layers, seq = 256, 4, 128
    expected = 6 * n_body + 12 * layers * d * seq + 6 * d * 1000 * 0.25
    assert training_flops_per_token(config, seq) == pytest.approx(expected)
    dense = training_flops_per_token(config, seq, masked_fraction=1.0)
    assert dense - training_flops_per_token(config, seq) == pytest.approx(6 * d * 1000 * 0.75)
    original = make_config("small", 1000, ["mlm_head_transform=true"])
    assert training_flops_per_token(original, seq, 1.0) - dense == pytest.approx(6 * d * d)
    with pytest.raises(ValueError, match="masked_fraction"):
        training_flops_per_token(config, seq, masked_fraction=1.5)


def test_default_flops_are_dominated_by_6n():
    config = make_config("crammed-bert", 32768)
    flops = training_flops_per_token(config, 128)
    assert 6 * 94.4e6 < flops < 6 * 94.4e6 * 1.15
