"""WordPiece training: reproducible, and the pieces we pre-register stay ordinary vocabulary."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, pre_tokenizers

from crammer.data import sources as src
from crammer.data.prepare import DataConfig, prepare
from crammer.data.tokenizer import SPECIAL_TOKENS, build_normalizer, continuing_pieces, train_wordpiece


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
    out = prepare(DataConfig(sources=("pydoc::max_docs=12",), out=str(tmp_path / "d"), vocab_size=400, seq_len=32,
                             filter_ratio=0.0, tokenizer_docs=4), progress=False)
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=False)
    on_prefix = train_wordpiece(lambda: docs[:4], 400, normalizer, show_progress=False)
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab() == on_prefix.get_vocab()
    on_all = train_wordpiece(lambda: docs, 400, normalizer, show_progress=False)
    assert on_all.get_vocab() != on_prefix.get_vocab()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["documents_read"] == 12 and manifest["config"]["tokenizer_docs"] == 4
