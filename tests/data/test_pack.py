"""Blocks and shards, and the orderings of blocks."""

from __future__ import annotations

import numpy as np

from crammer.data.config import CorpusConfig
from crammer.data.pack import BlockWriter, sequence_order, shard_dtype, write_ordered
from crammer.data.packed import PackedCorpus
from crammer.data.prepare import prepare
from tests.data.helpers import manifest, stream, tokenizer_path


def test_orderings(sample_corpus, tokenizer, wiki_sample, tmp_path):
    tok = str(tokenizer_path(tokenizer, tmp_path))
    base = dict(sources=(str(wiki_sample),), tokenizer=tok, seq_len=64, filter_ratio=0.0, validation_sequences=0)
    plain = stream(sample_corpus).reshape(-1, 64)

    def blocks(order, seed=0):
        cfg = CorpusConfig(**base, out=str(tmp_path / f"{order}{seed}"), order=order, seed=seed)
        out = prepare(cfg, progress=False)
        return stream(out).reshape(-1, 64)

    rand, rand1 = blocks("random"), blocks("random", seed=1)
    assert not np.array_equal(rand, plain) and not np.array_equal(rand, rand1)
    key = lambda b: sorted(map(bytes, b))  # noqa: E731  same multiset of blocks
    assert key(rand) == key(plain) == key(rand1)

    easy = blocks("easy-first")
    freq = np.bincount(plain.ravel(), minlength=tokenizer.get_vocab_size())
    mean_freq = freq[easy].mean(axis=1)
    assert key(easy) == key(plain) and np.all(np.diff(mean_freq) <= 1e-9)

    by_sentences = blocks("sentence-length")
    ends = [tokenizer.token_to_id(t) for t in ".!?"]
    counts = np.isin(by_sentences, ends).sum(axis=1)
    assert key(by_sentences) == key(plain) and np.all(np.diff(counts) <= 0) and counts[0] > counts[-1]


def test_shards_and_source_caps(shared_data, wiki_sample, tokenizer, tmp_path):
    xz = str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz")
    out = prepare(CorpusConfig(sources=(xz + "::max_docs=3", str(wiki_sample)), out=str(tmp_path / "d"), max_docs=10,
                               tokenizer=str(tokenizer_path(tokenizer, tmp_path)), seq_len=32, shard_sequences=100,
                               filter_ratio=0.0), progress=False)
    m = manifest(out)
    assert m["counts"]["documents_per_source"] == {xz + "::max_docs=3": 3, str(wiki_sample): 7}
    assert all(s["num_sequences"] == 100 for s in m["shards"][:-1]) and len(m["shards"]) > 2
    corpus = PackedCorpus(out)
    assert len(corpus) == m["num_sequences"] == sum(s["num_sequences"] for s in m["shards"])
    assert corpus.get_batch(np.array([0, len(corpus) - 1])).shape == (2, 32)


def test_block_writer_shards_and_uint32(tmp_path):
    writer = BlockWriter(tmp_path / "s", seq_len=4, shard_sequences=2, dtype=np.dtype(np.uint32))
    writer.add(np.arange(70000, 70019, dtype=np.uint32))
    assert writer.close() == 3 and [s.num_sequences for s in writer.shards] == [2, 2]
    assert [s.file for s in writer.shards] == ["s/shard-00000.npy", "s/shard-00001.npy"]  # relative to the corpus
    assert np.load(tmp_path / "s" / "shard-00001.npy").dtype == np.uint32

    assert shard_dtype(1 << 16) == np.uint16 and shard_dtype((1 << 16) + 1) == np.uint32


def test_write_ordered_gathers_across_staging_shards(tmp_path):
    staged = BlockWriter(tmp_path / "staging", seq_len=2, shard_sequences=3, dtype=np.dtype(np.uint16))
    staged.add(np.arange(14, dtype=np.uint16))  # blocks [0 1] [2 3] ... [12 13], in shards of 3, 3 and 1
    staged.close()
    assert [s.num_sequences for s in staged.shards] == [3, 3, 1]
    perm = np.array([6, 0, 4, 3, 1, 5, 2])
    assert np.array_equal(sequence_order("none", staged, 14, [], seed=0), np.arange(7))
    assert sorted(sequence_order("random", staged, 14, [], seed=0)) == list(range(7))
    out = BlockWriter(tmp_path / "shards", seq_len=2, shard_sequences=2, dtype=np.dtype(np.uint16))
    write_ordered(staged, perm, out)
    blocks = np.concatenate(list(out.blocks()))
    assert np.array_equal(blocks[:, 0], 2 * perm) and [s.num_sequences for s in out.shards] == [2, 2, 2, 1]
    staged.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
