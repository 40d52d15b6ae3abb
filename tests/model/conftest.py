"""Fixtures of the model tests: a small real tokenizer and tiny saved crammer folders (weights + code + tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from crammer.model import CrammedBertForMaskedLM, make_config

TOKENIZER_VOCAB = 307
ORIGINAL = ["norm_scheme=post", "use_bias=true", "ffn_type=mlp", "position_embedding=learned", "type_vocab_size=2",
            "mlm_head_transform=true"]


@pytest.fixture(scope="session")
def tokenizer(wiki_sample) -> PreTrainedTokenizerFast:
    """A small WordPiece tokenizer trained on the first ~40 KB of the Wikipedia sample."""
    text = wiki_sample.read_text(encoding="utf-8")[:40_000].splitlines()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def save_tiny(folder: Path, tokenizer, overrides=(), seed: int = 0) -> Path:
    """A tiny pretrained-like MLM saved as `cram pretrain` saves final/: weights, code and tokenizer."""
    torch.manual_seed(seed)
    config = make_config("tiny", len(tokenizer), [f"pad_token_id={tokenizer.pad_token_id}", *overrides])
    CrammedBertForMaskedLM(config).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer) -> Path:
    """The crammed recipe (pre-LN, GLU, sinusoidal positions, no token types)."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "final", tokenizer)


@pytest.fixture(scope="session")
def original_folder(tmp_path_factory, tokenizer) -> Path:
    """The `original` (exact BERT) architecture."""
    return save_tiny(tmp_path_factory.mktemp("original") / "final", tokenizer, ORIGINAL)
