"""`prepare` on the real Wikipedia data: packing, filter, determinism, cache, orderings, dedup."""

from __future__ import annotations

import json
import lzma
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from crammer.data import sources as src
from crammer.data.packed import PackedCorpus
from crammer.data.prepare import DataConfig, is_up_to_date, keep_document, prepare
from crammer.data.tokenizer import build_normalizer, train_wordpiece
from tests.data.conftest import expected_stream, manifest, stream


def sample_documents(path: Path) -> list[str]:
    """sample.txt parsed independently: blank-line separated articles, paragraphs joined by newlines."""
    docs, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def wiki_slice(shared_data: Path, n: int) -> list[str]:
    with lzma.open(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def test_sample_blocks_reproduce_normalized_text(sample_corpus, tokenizer, wiki_sample):
    docs = sample_documents(wiki_sample)
    m = manifest(sample_corpus)
    assert m["counts"]["documents_read"] == len(docs) and m["counts"]["documents_kept"] == len(docs)
    corpus = PackedCorpus(sample_corpus)
    assert all(np.load(sample_corpus / s["file"]).shape[1] == 64 for s in m["shards"])
    tokens = stream(sample_corpus)
    assert np.array_equal(tokens, expected_stream(tokenizer, docs, 64))  # [SEP] after every document
    assert m["counts"]["tokens_dropped_remainder"] < 64
    assert len(tokens) == len(corpus) * 64 == m["num_tokens"]
    assert tokenizer.token_to_id("[CLS]") not in tokens and tokenizer.token_to_id("[PAD]") not in tokens
    # decoding the documents between [SEP]s gives back the normalized text (spacing aside)
    sep = tokenizer.token_to_id("[SEP]")
    bounds = np.flatnonzero(tokens == sep)
    starts = np.concatenate([[0], bounds[:-1] + 1])
    assert len(bounds) == len(docs) - 1 or len(bounds) == len(docs)
    for doc, a, b in list(zip(docs, starts, bounds))[:40]:
        decoded = tokenizer.decode(tokens[a:b].tolist())
        normalized = tokenizer.normalizer.normalize_str(doc)
        assert "".join(decoded.split()) == "".join(normalized.split())
    assert tokenizer.normalizer.normalize_str("Éclair Ü") == "eclair u"


def test_jsonl_xz_slice_filter_and_counts(shared_data, tokenizer, tmp_path):
    docs = wiki_slice(shared_data, 40)
    ratios = [len(tokenizer.encode(d, add_special_tokens=False).ids) / len(d) for d in docs]
    ratio = round(float(np.median(ratios)), 3)  # the slice has documents on both sides of the filter
    out = prepare(DataConfig(sources=(str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz"),), out=str(tmp_path / "d"),
                             tokenizer=str(tokenizer_path(tokenizer, tmp_path)), max_docs=40, seq_len=128,
                             order="none", filter_ratio=ratio), progress=False)
    kept = [d for d in docs if len(tokenizer.encode(d, add_special_tokens=False).ids) < ratio * len(d)]
    assert 0 < len(kept) < len(docs)  # the slice has documents on both sides of the filter
    c = manifest(out)["counts"]
    assert (c["documents_read"], c["documents_kept"], c["documents_filtered"]) == (40, len(kept), 40 - len(kept))
    assert np.array_equal(stream(out), expected_stream(tokenizer, kept, 128))
    assert manifest(out)["vocab_size"] == tokenizer.get_vocab_size() and manifest(out)["dtype"] == "uint16"


def assert_documents_decode(tok: Tokenizer, tokens: np.ndarray, docs: list[str], n: int = 10) -> None:
    """The first `n` documents between [SEP]s decode to their normalized text (spacing aside)."""
    sep = tok.token_to_id("[SEP]")
    bounds = np.flatnonzero(tokens == sep)[:n]
    for doc, a, b in zip(docs, np.concatenate([[0], bounds[:-1] + 1]), bounds):
        assert "".join(tok.decode(tokens[a:b].tolist()).split()) == "".join(tok.normalizer.normalize_str(doc).split())


def test_global_max_docs_trains_the_tokenizer_on_those_documents(tmp_path):
    """Each pass over the corpus (the trainer's two, then packing) reads the first max_docs documents: with one
    shared counter the training pass read nothing, giving a 42-token vocabulary and a corpus of [UNK]s."""
    docs = list(src.read_documents([src.parse_source("pydoc")], "text", False, 30, src.ReadStats()))
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=False)
    for tokenizer_docs in (None, 20):  # 20: between max_docs/2 and max_docs, so the passes overlap
        out = prepare(DataConfig(sources=("pydoc",), out=str(tmp_path / f"d{tokenizer_docs}"), max_docs=30,
                                 tokenizer_docs=tokenizer_docs, vocab_size=1000, seq_len=32, filter_ratio=0.0,
                                 order="none"), progress=False)
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        trained_on = docs[:tokenizer_docs]
        assert tok.get_vocab() == train_wordpiece(lambda: trained_on, 1000, normalizer, False).get_vocab()
        m = manifest(out)
        assert m["counts"]["documents_read"] == 30 and m["counts"]["documents_per_source"] == {"pydoc": 30}
        tokens = stream(out)
        assert np.array_equal(tokens, expected_stream(tok, docs, 32))
        assert m["unk_fraction"] == round(m["counts"]["tokens_unk"] / m["counts"]["tokens"], 6)
        assert m["unk_fraction"] < (0.01 if tokenizer_docs else 1e-9)  # unseen characters only after doc 20
        assert_documents_decode(tok, tokens, docs)


def test_unk_fraction_is_recorded_and_warned(tokenizer, tmp_path, capsys):
    texts = ["Plain English words.", "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ ᏣᎳᎩ ქართული ენა 日本語"]  # scripts the sample tokenizer never saw
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = str(tokenizer_path(tokenizer, tmp_path))
    out = prepare(DataConfig(sources=(str(source),), out=str(tmp_path / "d"), tokenizer=tok, seq_len=4,
                             filter_ratio=0.0, order="none"), progress=False)
    sep = tokenizer.token_to_id("[SEP]")
    ids = [i for t in texts for i in tokenizer.encode(t, add_special_tokens=False).ids + [sep]]
    unk = ids.count(tokenizer.token_to_id("[UNK]"))
    m = manifest(out)
    assert unk > 0 and (m["counts"]["tokens_unk"], m["counts"]["tokens"]) == (unk, len(ids))
    assert m["unk_fraction"] == round(unk / len(ids), 6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and f"{m['unk_fraction']:.1%} of the tokens are [UNK]" in err


def test_given_tokenizer_keeps_whole_documents_and_adds_no_padding(minilm_path, shared_data, tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json truncates and pads to 128: packing must undo both."""
    docs = wiki_slice(shared_data, 2) + ["A short one."]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = prepare(DataConfig(sources=(str(source),), out=str(tmp_path / "d"), tokenizer=str(minilm_path), seq_len=64,
                             filter_ratio=0.0, order="none"), progress=False)
    reference = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    assert reference.truncation and reference.padding  # the file's own settings, which packing must not use
    reference.no_truncation()
    reference.no_padding()
    assert len(reference.encode(docs[0], add_special_tokens=False)) > 1000
    tokens = stream(out)
    assert np.array_equal(tokens, expected_stream(reference, docs, 64))
    assert reference.token_to_id("[PAD]") not in tokens
    assert_documents_decode(reference, tokens, docs)


def tokenizer_path(tok, tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_filter_boundary(tokenizer, tmp_path):
    assert tokenizer.encode("a a a  a", add_special_tokens=False).tokens == ["a"] * 4
    src = tmp_path / "docs.jsonl"
    # 4 tokens each: 8 chars -> 4 == 0.5*8 is dropped; 9 chars -> 4 < 4.5 is kept
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["a a a  a", "a a a   a"]) + "\n")
    out = prepare(DataConfig(sources=(str(src),), out=str(tmp_path / "d"), tokenizer=str(tokenizer_path(tokenizer, tmp_path)),
                             seq_len=5, filter_ratio=0.5, order="none"), progress=False)
    c = manifest(out)["counts"]
    assert (c["documents_filtered"], c["documents_kept"], c["sequences"]) == (1, 1, 1)
    assert tokenizer.decode(stream(out).tolist(), skip_special_tokens=False) == "a a a a [SEP]"
    n_tokens, n_chars = np.array([4, 4, 3, 0]), np.array([8, 9, 8, 5])
    assert keep_document(n_tokens, n_chars, 0.5).tolist() == [False, True, True, False]
    assert keep_document(n_tokens, n_chars, 0.0).tolist() == [True, True, True, False]  # 0 disables


def test_same_config_is_byte_identical_for_any_worker_count(shared_data, tokenizer, tmp_path):
    source = str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz") + "::max_docs=30"
    tok = str(tokenizer_path(tokenizer, tmp_path))
    runs = []
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        cfg = DataConfig(sources=(source,), out=str(tmp_path / name), tokenizer=tok, workers=workers,
                         shard_sequences=200, filter_ratio=0.5)
        runs.append(prepare(cfg, progress=False))
    ref = manifest(runs[0])
    assert len(ref["shards"]) > 1
    for other in runs[1:]:
        for name in ["tokenizer.json"] + [s["file"] for s in ref["shards"]]:
            assert (other / name).read_bytes() == (runs[0] / name).read_bytes(), name
        assert manifest(other)["config_hash"] == ref["config_hash"]
        assert manifest(other)["counts"] == ref["counts"]


def test_cache_reuse_and_invalidation(tokenizer, wiki_sample, tmp_path, monkeypatch):
    cfg = DataConfig(sources=(str(wiki_sample) + "::max_docs=20",), out=str(tmp_path / "d"),
                     tokenizer=str(tokenizer_path(tokenizer, tmp_path)), seq_len=64)
    out = prepare(cfg, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    import crammer.data.prepare as prep

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of reusing the cache")

    monkeypatch.setattr(prep, "load_tokenizer", fail)
    assert is_up_to_date(cfg) and not is_up_to_date(DataConfig(**{**cfg.__dict__, "seed": 1}))
    assert prepare(DataConfig(**{**cfg.__dict__, "workers": 2}), progress=False) == out  # workers: same bytes
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    prepare(DataConfig(**{**cfg.__dict__, "seed": 1}), progress=False)  # another recipe: rebuilt
    assert manifest(out)["config"]["seed"] == 1 and (out / "manifest.json").stat().st_mtime_ns != stamp
    # Another tokenizer at the same path: the path is the same, the content is not, so it is rebuilt.
    stamp = (out / "manifest.json").stat().st_mtime_ns
    before = manifest(out)["tokenizer_fingerprint"]
    with open(cfg.tokenizer, "a") as f:
        f.write("\n")
    assert not is_up_to_date(DataConfig(**{**cfg.__dict__, "seed": 1}))
    prepare(DataConfig(**{**cfg.__dict__, "seed": 1}), progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert manifest(out)["tokenizer_fingerprint"] != before and before.startswith("sha256:")


def test_orderings(sample_corpus, tokenizer, wiki_sample, tmp_path):
    tok = str(tokenizer_path(tokenizer, tmp_path))
    base = dict(sources=(str(wiki_sample),), tokenizer=tok, seq_len=64, filter_ratio=0.0)
    plain = stream(sample_corpus).reshape(-1, 64)

    def blocks(order, seed=0):
        out = prepare(DataConfig(**base, out=str(tmp_path / f"{order}{seed}"), order=order, seed=seed), progress=False)
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


def test_dedup_after_normalization(tokenizer, tmp_path):
    texts = ["The cat sat on the mat.", "A dog ran home.", "THE CAT SAT ON THE MAT.", "A dog ran home.", "Fish swim."]
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = str(tokenizer_path(tokenizer, tmp_path))
    out = prepare(DataConfig(sources=(str(src),), out=str(tmp_path / "d"), tokenizer=tok, seq_len=4,
                             filter_ratio=0.0, order="none", dedup=True), progress=False)
    c = manifest(out)["counts"]
    assert (c["documents_deduplicated"], c["documents_kept"]) == (2, 3)
    unique = [texts[0], texts[1], texts[4]]
    assert np.array_equal(stream(out), expected_stream(tokenizer, unique, 4))


def test_pydoc_smoke_corpus_and_transformers_tokenizer(tmp_path):
    out = prepare(DataConfig(sources=("pydoc::max_docs=30",), out=str(tmp_path / "d"), vocab_size=30000, seq_len=32),
                  progress=False)
    m = manifest(out)
    assert m["smoke_corpus"] and "smoke" in m["note"] and m["counts"]["documents_read"] == 30
    assert m["vocab_size"] < 30000 == m["vocab_size_requested"]  # a small corpus cannot fill the vocab
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.model_max_length == 32
    enc = tok("Hello there", "General Kenobi")
    ids = enc["input_ids"]
    assert ids[0] == m["special_tokens"]["cls"] and ids.count(m["special_tokens"]["sep"]) == 2
    assert enc["token_type_ids"][-1] == 1 and enc["token_type_ids"][0] == 0
    assert tok.decode(tok("HÉLLO")["input_ids"], skip_special_tokens=True) == "hello"
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True


def test_normalization_options(tmp_path):
    from crammer.data.tokenizer import build_normalizer

    assert build_normalizer(True, True, False).normalize_str("Ça va 中文") == "ca va 中文"
    assert build_normalizer(True, True, True).normalize_str("Ça va 中文") == "ca va "
    assert build_normalizer(False, True, False).normalize_str("Ça") == "Ca"
    assert build_normalizer(True, False, False).normalize_str("Ça") == "c\u0327a"
    src = tmp_path / "t.txt"
    src.write_text("Ünïcode Wörds and More Wörds.\n\nZweite Straße, Ärger.\n")
    out = prepare(DataConfig(sources=(str(src),), out=str(tmp_path / "d"), vocab_size=100, seq_len=4,
                             lowercase=False, strip_accents=False), progress=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok("Wörds")["input_ids"], skip_special_tokens=True) == unicodedata.normalize("NFD", "Wörds")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_shards_and_source_caps(shared_data, wiki_sample, tokenizer, tmp_path):
    xz = str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz")
    out = prepare(DataConfig(sources=(xz + "::max_docs=3", str(wiki_sample)), out=str(tmp_path / "d"), max_docs=10,
                             tokenizer=str(tokenizer_path(tokenizer, tmp_path)), seq_len=32, shard_sequences=100,
                             filter_ratio=0.0), progress=False)
    m = manifest(out)
    assert m["counts"]["documents_per_source"] == {xz + "::max_docs=3": 3, str(wiki_sample): 7}
    assert all(s["num_sequences"] == 100 for s in m["shards"][:-1]) and len(m["shards"]) > 2
    corpus = PackedCorpus(out)
    assert len(corpus) == m["num_sequences"] == sum(s["num_sequences"] for s in m["shards"])
    assert corpus.get_batch(np.array([0, len(corpus) - 1])).shape == (2, 32)


def test_block_writer_shards_and_uint32(tmp_path):
    from crammer.data.prepare import BlockWriter

    writer = BlockWriter(tmp_path / "s", seq_len=4, shard_sequences=2, dtype=np.dtype(np.uint32))
    writer.add(np.arange(70000, 70019, dtype=np.uint32))
    assert writer.close() == 3 and [s["num_sequences"] for s in writer.shards] == [2, 2]
    assert np.load(tmp_path / "s" / "shard-00001.npy").dtype == np.uint32
