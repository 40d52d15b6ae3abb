"""Tokenizing in threads, the compression filter and deduplication."""

from __future__ import annotations

import json

import numpy as np

from crammer.data.config import CorpusConfig
from crammer.data.encode import (CHUNK_CHARS, ChunkEncoder, CompressionFilter, Deduplicator, EncodedChunk,
                                 chunk_documents, encode_all, keep_document)
from crammer.data.prepare import prepare
from tests.data.helpers import expected_stream, manifest, stream, tokenizer_path


def test_filter_boundary(tokenizer, tmp_path):
    assert tokenizer.encode("a a a  a", add_special_tokens=False).tokens == ["a"] * 4
    src = tmp_path / "docs.jsonl"
    # 4 tokens each: 8 chars -> 4 == 0.5*8 is dropped; 9 chars -> 4 < 4.5 is kept
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["a a a  a", "a a a   a"]) + "\n")
    tok = str(tokenizer_path(tokenizer, tmp_path))
    out = prepare(CorpusConfig(sources=(str(src),), out=str(tmp_path / "d"), tokenizer=tok, seq_len=5, filter_ratio=0.5,
                               order="none"), progress=False)
    c = manifest(out)["counts"]
    assert (c["documents_filtered"], c["documents_kept"], c["sequences"]) == (1, 1, 1)
    assert tokenizer.decode(stream(out).tolist(), skip_special_tokens=False) == "a a a a [SEP]"
    n_tokens, n_chars = np.array([4, 4, 3, 0]), np.array([8, 9, 8, 5])
    texts = ["a" * n for n in n_chars]
    assert keep_document(texts, n_tokens, n_chars, CompressionFilter(0.5)).tolist() == [False, True, True, False]
    assert keep_document(texts, n_tokens, n_chars, None).tolist() == [True, True, True, False]  # no filter


def test_the_filter_allows_each_script_its_own_tokens_per_character():
    """A character of a script written without spaces gets the `unspaced` allowance, any other `spaced`."""
    texts = ["コマンド abc", "abcdefgh", "漢字漢字漢字漢字"]  # 4 unspaced + 4 spaced, 8 spaced, 8 unspaced
    n_chars = np.array([len(t) for t in texts])
    limits = CompressionFilter(0.25, 0.75).limits(texts, n_chars)
    assert limits.tolist() == [4 * 0.25 + 4 * 0.75, 8 * 0.25, 8 * 0.75]
    assert CompressionFilter(0.25).limits(texts, n_chars).tolist() == [2.0, 2.0, 2.0]  # every character alike
    assert keep_document(texts, np.array([3, 3, 3]), n_chars, CompressionFilter(0.25, 0.75)).tolist() == [
        True, False, True]


def test_same_config_is_byte_identical_for_any_worker_count(shared_data, tokenizer, tmp_path):
    source = str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz") + "::max_docs=30"
    tok = str(tokenizer_path(tokenizer, tmp_path))
    runs = []
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        cfg = CorpusConfig(sources=(source,), out=str(tmp_path / name), tokenizer=tok, workers=workers,
                           shard_sequences=200, filter_ratio=0.5)
        runs.append(prepare(cfg, progress=False))
    ref = manifest(runs[0])
    assert len(ref["shards"]) > 1
    for other in runs[1:]:
        for name in ["tokenizer.json"] + [s["file"] for s in ref["shards"]]:
            assert (other / name).read_bytes() == (runs[0] / name).read_bytes(), name
        assert manifest(other)["config_hash"] == ref["config_hash"]
        assert manifest(other)["counts"] == ref["counts"]


def test_dedup_after_normalization(tokenizer, tmp_path):
    texts = ["The cat sat on the mat.", "A dog ran home.", "THE CAT SAT ON THE MAT.", "A dog ran home.", "Fish swim."]
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = str(tokenizer_path(tokenizer, tmp_path))
    out = prepare(CorpusConfig(sources=(str(src),), out=str(tmp_path / "d"), tokenizer=tok, seq_len=4,
                               filter_ratio=0.0, order="none", dedup=True), progress=False)
    c = manifest(out)["counts"]
    assert (c["documents_deduplicated"], c["documents_kept"]) == (2, 3)
    unique = [texts[0], texts[1], texts[4]]
    assert np.array_equal(stream(out), expected_stream(tokenizer, unique, 4))


def test_deduplicator_keeps_the_first_copy_across_chunks():
    def chunk(docs: list[list[int]]) -> EncodedChunk:
        tokens = np.concatenate([np.asarray(d + [3], dtype=np.uint16) for d in docs])
        hashes = [bytes(d) for d in docs]  # stand-ins: equal documents, equal hashes
        return EncodedChunk(tokens, np.asarray([len(d) + 1 for d in docs]), np.asarray([10 * len(d) for d in docs]),
                            hashes, filtered=0)

    dedup = Deduplicator()
    tokens, lengths, chars = dedup.filter(chunk([[5, 6], [7], [5, 6]]))
    assert tokens.tolist() == [5, 6, 3, 7, 3] and lengths.tolist() == [3, 2] and chars.tolist() == [20, 10]
    tokens, lengths, chars = dedup.filter(chunk([[7], [8, 9]]))
    assert tokens.tolist() == [8, 9, 3] and lengths.tolist() == [3] and chars.tolist() == [20]
    assert dedup.duplicates == 2


def test_chunks_keep_documents_whole_and_in_order(tokenizer):
    docs = ["x" * CHUNK_CHARS, "short", "y" * (CHUNK_CHARS - 5), "tail"]  # a chunk ends once it has enough
    assert [[len(d) for d in c] for c in chunk_documents(docs)] == [[CHUNK_CHARS], [5, CHUNK_CHARS - 5], [4]]
    encode = ChunkEncoder(tokenizer, None, tokenizer.token_to_id("[SEP]"), dedup=True, dtype=np.dtype(np.uint16))
    texts = [["Hello there.", "General Kenobi."], ["Hello there."]] * 3
    serial = [encode(t) for t in texts]
    threaded = list(encode_all(iter(texts), 2, encode))
    assert [c.tokens.tolist() for c in threaded] == [c.tokens.tolist() for c in serial]
    assert threaded[1].doc_hashes == threaded[0].doc_hashes[:1]  # the same document hashes the same
