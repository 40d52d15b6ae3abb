"""WordPiece training: reproducible, and the pieces we pre-register stay ordinary vocabulary."""

from __future__ import annotations

from tokenizers import Tokenizer, pre_tokenizers

from crammer.data import sources as src
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
