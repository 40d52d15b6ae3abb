"""Document size never sets memory: long documents are read and tokenized in bounded pieces, with the ids
(and the tokenizer) of the whole document, and ordinary documents exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crammer.data.config import CorpusConfig
from crammer.data.encode import CHUNK_CHARS, PIECE_CHARS, ChunkEncoder, CompressionFilter, _batches, document_pieces
from crammer.data.formats import _text_docs
from crammer.data.prepare import prepare
from crammer.data.tokenizer import build_normalizer, train_wordpiece
from tests.data.helpers import expected_stream, sample_documents, stream, wiki_slice


@pytest.fixture(scope="module")
def articles(shared_data) -> list[str]:
    """40 real Wikipedia articles (one paragraph per line), 1.1 M characters: joined, past PIECE_CHARS."""
    return wiki_slice(shared_data, 40)


def _encoder(tokenizer, piece_chars: int = PIECE_CHARS, filter_ratio: float = 0.0) -> ChunkEncoder:
    compression = CompressionFilter(filter_ratio) if filter_ratio else None
    return ChunkEncoder(tokenizer, compression, tokenizer.token_to_id("[SEP]"), False, np.dtype(np.uint16),
                        piece_chars)


def _whole(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint16)


def test_pieces_are_the_text_cut_after_lines_then_at_spaces_then_at_the_cap():
    text = "first line\nsecond line\n" + "word " * 8 + "x" * 30
    pieces = list(document_pieces(text, 16))
    assert "".join(pieces) == text and all(len(p) <= 16 for p in pieces)
    assert pieces[:2] == ["first line\n", "second line\n"]  # after a line break while there is one in reach
    assert pieces[2] == "word word word " and pieces[3] == "word word word "  # else after a space
    assert pieces[-2:] == ["x" * 16, "x" * 14]  # a cap's worth without whitespace: at the cap
    short = "a whole document"
    assert list(document_pieces(short, len(short))) == [short] and next(document_pieces(short)) is short
    # a chunk of ordinary documents is one tokenizer call, as before; a long one is batched piece by piece
    assert len(list(_batches(["a" * 10, "b" * 10], 100))) == 1
    long_batches = list(_batches(["x " * CHUNK_CHARS], PIECE_CHARS))
    assert len(long_batches) == 2
    assert all(sum(map(len, pieces)) < CHUNK_CHARS + PIECE_CHARS for pieces, _ in long_batches)


def test_piecewise_ids_are_the_whole_documents_ids(tokenizer, articles):
    """Real articles cut into ~2000-character pieces, and documents past the real cap built from real text
    (lines joined, and one single line): the concatenated ids are those of the whole document."""
    small = _encoder(tokenizer, piece_chars=2000)(articles)
    assert np.array_equal(small.tokens, _encoder(tokenizer)(articles).tokens)
    sep = tokenizer.token_to_id("[SEP]")
    expected = np.concatenate([np.append(_whole(tokenizer, a), sep) for a in articles])
    assert np.array_equal(small.tokens, expected)

    lines = "\n".join(articles)  # 17 x PIECE_CHARS
    one_line = lines.replace("\n", " ")
    for text in (lines, one_line):
        assert len(text) > PIECE_CHARS
        chunk = _encoder(tokenizer)([text])
        assert np.array_equal(chunk.tokens[:-1], _whole(tokenizer, text)) and chunk.tokens[-1] == sep
        assert chunk.doc_lengths.tolist() == [len(chunk.tokens)]


def test_the_filter_judges_a_long_document_whole(tokenizer, articles):
    """Its token and character counts are the whole document's, not a piece's: kept or dropped as one."""
    text = "\n".join(articles[:10])
    n_tokens, n_chars = len(_whole(tokenizer, text)), len(text)
    kept = _encoder(tokenizer, piece_chars=1000, filter_ratio=n_tokens / n_chars * 1.0001)([text])
    assert kept.filtered == 0 and kept.doc_lengths.tolist() == [n_tokens + 1]
    dropped = _encoder(tokenizer, piece_chars=1000, filter_ratio=n_tokens / n_chars * 0.9999)([text])
    assert dropped.filtered == 1 and len(dropped.tokens) == 0


def test_a_text_block_without_blank_lines_is_cut_into_bounded_documents_at_lines(articles):
    lines = [line for a in articles[:5] for line in a.split("\n")]
    raw = [(i, (line + "\n").encode()) for i, line in enumerate(lines, 1)]
    docs = list(_text_docs(iter(raw), "f.txt", block_chars=20000))
    assert len(docs) > 3 and "\n".join(d for _, d in docs) == "\n".join(lines)  # cut only between lines
    longest_line = max(map(len, lines))
    assert all(len(d) < 20000 + longest_line + 1 for _, d in docs)
    assert docs[0][0] == 1 and all(d.split("\n")[0] == lines[start - 1] for start, d in docs)  # first lines
    blank_separated = [(1, b"one\n"), (2, b"\n"), (3, b"two\n")]  # ordinary blocks: as before
    assert list(_text_docs(iter(blank_separated), "f.txt", block_chars=20000)) == [(1, "one"), (3, "two")]


def test_a_long_document_prepares_to_its_whole_ids_and_trains_the_same_tokenizer(articles, tokenizer, tmp_path):
    """End to end: a .jsonl with a 1.1 M character record among ordinary ones. With a given tokenizer the
    blocks are those of whole-document encoding; a tokenizer trained here (on pieces) equals one trained on
    the whole documents, as the earlier code trained it."""
    docs = [articles[0], "\n".join(articles), articles[1]]
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok_file = tmp_path / "tok.json"
    tokenizer.save(str(tok_file))
    common = {"sources": (str(source),), "seq_len": 64, "filter_ratio": 0.0, "order": "none", "validation_sequences": 0}
    given = prepare(CorpusConfig(out=str(tmp_path / "given"), tokenizer=str(tok_file), **common), progress=False)
    assert np.array_equal(stream(given), expected_stream(tokenizer, docs, 64))

    trained = prepare(CorpusConfig(out=str(tmp_path / "trained"), vocab_size=2000, **common), progress=False)
    whole = train_wordpiece(lambda: iter(docs), 2000, build_normalizer(True, True, False), False)
    ours = json.loads((trained / "tokenizer.json").read_text())["model"]["vocab"]
    assert ours == json.loads(whole.to_str())["model"]["vocab"]


def test_ordinary_documents_give_the_same_bytes_as_before(sample_corpus, tokenizer, wiki_sample):
    """The shared Wikipedia sample (89 articles, 5 of them longer than PIECE_CHARS, in several chunks): the
    stored blocks are those of encoding each whole article, as before pieces existed."""
    docs = sample_documents(Path(wiki_sample))
    assert any(len(d) > PIECE_CHARS for d in docs) and sum(map(len, docs)) > CHUNK_CHARS
    assert np.array_equal(stream(sample_corpus), expected_stream(tokenizer, docs, 64))
