"""The validation split: whole documents held out, never a piece of a training document, the same every time."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crammer.data.config import CorpusConfig
from crammer.data.packed import PackedCorpus
from crammer.data.pack import BlockWriter
from crammer.data.prepare import prepare
from crammer.data.split import AUTO_MAX, held_out_threshold, split_documents, validation_target
from crammer.errors import CrammerError
from tests.data.helpers import manifest, stream, tokenizer_path, wiki_slice


def _documents_in(tokens: np.ndarray, encoded: list[list[int]], sep: int) -> list[int]:
    """Which documents (by index) a flat stream holds, in corpus order, each whole and followed by [SEP] (the
    last one may be cut where the stream ends); fails if the stream holds anything else."""
    found, at, tokens = [], 0, tokens.tolist()
    for i, ids in enumerate(encoded):
        piece = ids + [sep]
        if tokens[at:at + len(piece)] == piece:
            found.append(i)
            at += len(piece)
        elif at < len(tokens) and at + len(piece) > len(tokens) and tokens[at:] == piece[:len(tokens) - at]:
            found.append(i)
            at = len(tokens)
    assert at == len(tokens), f"the stream holds something else at token {at}"
    return found


def test_the_validation_split_holds_out_whole_documents_only(shared_data, tokenizer, tmp_path):
    docs = wiki_slice(shared_data, 120)
    source = tmp_path / "wiki.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = CorpusConfig(sources=(str(source),), out=str(tmp_path / "d"), seq_len=64, filter_ratio=0.0, order="none",
                       tokenizer=str(tokenizer_path(tokenizer, tmp_path)), validation_sequences=600)
    out = prepare(cfg, progress=False)
    m = manifest(out)
    sep = tokenizer.token_to_id("[SEP]")
    encoded = [tokenizer.encode(d, add_special_tokens=False).ids for d in docs]
    validation = PackedCorpus(out, split="validation")
    assert len(validation) == m["validation_sequences"] >= 600
    held_out = _documents_in(stream(out, "validation_shards"), encoded, sep)
    trained = _documents_in(stream(out), encoded, sep)  # every document whole, in corpus order, in both
    assert len(held_out) == m["validation_documents"] and not set(held_out) & set(trained)
    assert sorted(held_out + trained) == list(range(len(docs)))[: len(held_out) + len(trained)]
    assert m["num_sequences"] == len(PackedCorpus(out)) and m["num_tokens"] == 64 * m["num_sequences"]
    # the held-out documents come from all over the corpus, not from one end of it
    assert len(held_out) >= 3 and min(held_out) < len(docs) / 3 and max(held_out) > 2 * len(docs) / 3

    again = prepare(dataclasses.replace(cfg, out=str(tmp_path / "again")), progress=False)
    assert np.array_equal(stream(again, "validation_shards"), stream(out, "validation_shards"))
    other = prepare(dataclasses.replace(cfg, out=str(tmp_path / "seed1"), seed=1), progress=False)
    assert not np.array_equal(stream(other, "validation_shards"), stream(out, "validation_shards"))


def test_no_split_when_turned_off_and_older_corpora_have_none(sample_corpus):
    corpus = PackedCorpus(sample_corpus)  # prepared with validation_sequences=0
    assert not corpus.has_validation and len(corpus.validation()) == 0
    assert manifest(sample_corpus)["validation_shards"] == []


@pytest.mark.parametrize("requested, total, expected", [
    (None, 1_000_000, 5000), (None, 10_000_000, AUTO_MAX), (None, 8000, 256), (None, 700, 35), (None, 10, 0),
    (0, 1000, 0), (300, 1000, 300),
])
def test_how_many_blocks_are_held_out(requested, total, expected):
    assert validation_target(requested, total) == expected


def test_asking_for_more_than_half_the_corpus_is_an_error():
    with pytest.raises(CrammerError, match="validation_sequences=600 is more than half of the corpus's 1000"):
        validation_target(600, 1000)
    with pytest.raises(CrammerError, match="validation_sequences: must be >= 0"):
        CorpusConfig(validation_sequences=-1)


def test_split_documents_routes_every_token_of_a_document_one_way(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=500)
    ids = np.concatenate([np.full(n, i % 60000, dtype=np.int64) for i, n in enumerate(lengths)])  # doc i = token i
    staged = BlockWriter(tmp_path / "staged", 8, 50, np.dtype(np.uint16))
    staged.add(ids)
    staged.close()
    threshold = held_out_threshold(lengths, 800, seed=3)
    train = BlockWriter(tmp_path / "train", 8, 50, np.dtype(np.uint16))
    validation = BlockWriter(tmp_path / "validation", 8, 50, np.dtype(np.uint16))
    held = split_documents(staged.blocks(), lengths, threshold, 3, train, validation, max_tokens=16)
    train.close()
    validation.close()
    seen_train = {int(t) for b in train.blocks() for t in b.ravel()}
    seen_validation = {int(t) for b in validation.blocks() for t in b.ravel()}
    assert not seen_train & seen_validation and len(seen_validation) == held
    held_tokens = sum(int(lengths[i]) for i in seen_validation)
    assert 800 <= held_tokens < 800 + lengths.max()  # at least the target, at most one document more
