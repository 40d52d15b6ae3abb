"""WordPiece training: reproducible, and the pieces we pre-register stay ordinary vocabulary; given tokenizers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer

from crammer.data import sources as src
from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.data.tokenizer import SPECIAL_TOKENS, build_normalizer, continuing_pieces, train_wordpiece
from crammer.errors import CrammerError
from tests.data.helpers import assert_documents_decode, expected_stream, stream, wiki_slice


def test_tokenizer_training_is_deterministic():
    """`tokenizers`' trainer alone gave 3 different vocabularies in 10 runs on this corpus (#1794 upstream)."""
    docs = list(src.read_documents([src.parse_source("pydoc::max_docs=20")], "text", False, None, src.ReadStats()))
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=True)
    runs = {train_wordpiece(lambda: docs, 600, normalizer, show_progress=False).to_str() for _ in range(8)}
    assert len(runs) == 1
    tok = Tokenizer.from_str(runs.pop())
    assert tok.get_vocab_size() == 600
    vocab = tok.get_vocab()
    assert [t for t in sorted(vocab, key=vocab.get)[:5]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The pieces handed to the trainer up front are ordinary vocabulary, not special tokens.
    assert sorted(t.content for t in tok.get_added_tokens_decoder().values()) == sorted(SPECIAL_TOKENS.values())
    assert tok.encode("mixed ##e").tokens[-3:] == ["#", "#", "e"]
    assert "##e" in vocab and "##." not in vocab  # punctuation never continues a word


def test_continuing_pieces_cover_normalized_forms():
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=False)
    pieces = continuing_pieces("ÉxΣ. -", normalizer, pre_tokenizers.BertPreTokenizer())
    assert pieces == sorted(pieces) and set(pieces) == {"##e", "##x", "##σ"}


def test_tokenizer_docs_trains_on_a_prefix_and_packs_everything(tmp_path):
    docs = list(src.read_documents([src.parse_source("pydoc::max_docs=12")], "text", False, None, src.ReadStats()))
    out = prepare(CorpusConfig(sources=("pydoc::max_docs=12",), out=str(tmp_path / "d"), vocab_size=400, seq_len=32,
                               filter_ratio=0.0, tokenizer_docs=4), progress=False)
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=False)
    on_prefix = train_wordpiece(lambda: docs[:4], 400, normalizer, show_progress=False)
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab() == on_prefix.get_vocab()
    on_all = train_wordpiece(lambda: docs, 400, normalizer, show_progress=False)
    assert on_all.get_vocab() != on_prefix.get_vocab()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["documents_read"] == 12 and manifest["config"]["tokenizer_docs"] == 4


def test_given_tokenizer_keeps_whole_documents_and_adds_no_padding(minilm_path, shared_data, tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json truncates and pads to 128: packing must undo both."""
    docs = wiki_slice(shared_data, 2) + ["A short one."]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = prepare(CorpusConfig(sources=(str(source),), out=str(tmp_path / "d"), tokenizer=str(minilm_path), seq_len=64,
                               filter_ratio=0.0, order="none", validation_sequences=0), progress=False)
    reference = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    assert reference.truncation and reference.padding  # the file's own settings, which packing must not use
    reference.no_truncation()
    reference.no_padding()
    assert len(reference.encode(docs[0], add_special_tokens=False)) > 1000
    tokens = stream(out)
    assert np.array_equal(tokens, expected_stream(reference, docs, 64))
    assert reference.token_to_id("[PAD]") not in tokens
    assert_documents_decode(reference, tokens, docs)


def test_normalization_options(tmp_path):
    from crammer.data.tokenizer import build_normalizer

    assert build_normalizer(True, True, False).normalize_str("Ça va 中文") == "ca va 中文"
    assert build_normalizer(True, True, True).normalize_str("Ça va 中文") == "ca va "
    assert build_normalizer(False, True, False).normalize_str("Ça") == "Ca"
    assert build_normalizer(True, False, False).normalize_str("Ça") == "ça"  # NFC: accents stay composed
    assert build_normalizer(False, False, False).normalize_str("コマント\u3099") == "コマンド"
    src = tmp_path / "t.txt"
    src.write_text("Ünïcode Wörds and More Wörds.\n\nZweite Straße, Ärger.\n")
    out = prepare(CorpusConfig(sources=(str(src),), out=str(tmp_path / "d"), vocab_size=100, seq_len=4,
                               normalization="cased"), progress=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok("Wörds")["input_ids"], skip_special_tokens=True) == "Wörds"
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_bad_tokenizer_values(tmp_path):
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(CrammerError, match="not a tokenizers JSON file"):
        prepare(CorpusConfig(out=str(tmp_path / "o"), tokenizer=str(tmp_path / "t.json")), progress=False)
    with pytest.raises(CrammerError, match="no such tokenizer file"):
        prepare(CorpusConfig(out=str(tmp_path / "o"), tokenizer=str(tmp_path / "missing.json")), progress=False)
