"""`prepare` on the real Wikipedia data: packing, counts, the tokenizer's passes, [UNK]s, the cache."""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from crammer.data import sources as src
from crammer.data.config import CorpusConfig
from crammer.data.packed import PackedCorpus
from crammer.data.prepare import is_up_to_date, prepare
from crammer.data.tokenizer import build_normalizer, train_wordpiece
from tests.data.helpers import (assert_documents_decode, expected_stream, manifest, sample_documents, stream,
                                tokenizer_path, wiki_slice)


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
    xz = str(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz")
    out = prepare(CorpusConfig(sources=(xz,), out=str(tmp_path / "d"),
                               tokenizer=str(tokenizer_path(tokenizer, tmp_path)), max_docs=40, seq_len=128,
                               order="none", filter_ratio=ratio, validation_sequences=0), progress=False)
    kept = [d for d in docs if len(tokenizer.encode(d, add_special_tokens=False).ids) < ratio * len(d)]
    assert 0 < len(kept) < len(docs)  # the slice has documents on both sides of the filter
    c = manifest(out)["counts"]
    assert (c["documents_read"], c["documents_kept"], c["documents_filtered"]) == (40, len(kept), 40 - len(kept))
    assert np.array_equal(stream(out), expected_stream(tokenizer, kept, 128))
    assert manifest(out)["vocab_size"] == tokenizer.get_vocab_size() and manifest(out)["dtype"] == "uint16"


def test_global_max_docs_trains_the_tokenizer_on_those_documents(tmp_path):
    """Each pass over the corpus (the trainer's two, then packing) reads the first max_docs documents: with one
    shared counter the training pass read nothing, giving a 42-token vocabulary and a corpus of [UNK]s."""
    docs = list(src.read_documents([src.parse_source("pydoc")], "text", False, 30, src.ReadStats()))
    normalizer = build_normalizer(lowercase=True, strip_accents=True, ascii_only=False)
    for tokenizer_docs in (None, 20):  # 20: between max_docs/2 and max_docs, so the passes overlap
        out = prepare(CorpusConfig(sources=("pydoc",), out=str(tmp_path / f"d{tokenizer_docs}"), max_docs=30,
                                   tokenizer_docs=tokenizer_docs, vocab_size=1000, seq_len=32, filter_ratio=0.0,
                                   order="none", validation_sequences=0), progress=False)
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
    out = prepare(CorpusConfig(sources=(str(source),), out=str(tmp_path / "d"), tokenizer=tok, seq_len=4,
                               filter_ratio=0.0, order="none"), progress=False)
    sep = tokenizer.token_to_id("[SEP]")
    ids = [i for t in texts for i in tokenizer.encode(t, add_special_tokens=False).ids + [sep]]
    unk = ids.count(tokenizer.token_to_id("[UNK]"))
    m = manifest(out)
    assert unk > 0 and (m["counts"]["tokens_unk"], m["counts"]["tokens"]) == (unk, len(ids))
    assert m["unk_fraction"] == round(unk / len(ids), 6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and f"{m['unk_fraction']:.1%} of the tokens are [UNK]" in err


def test_cache_reuse_and_invalidation(tokenizer, wiki_sample, tmp_path, capsys):
    cfg = CorpusConfig(sources=(str(wiki_sample) + "::max_docs=20",), out=str(tmp_path / "d"),
                       tokenizer=str(tokenizer_path(tokenizer, tmp_path)), seq_len=64)
    out = prepare(cfg, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert is_up_to_date(cfg) and not is_up_to_date(CorpusConfig(**{**cfg.__dict__, "seed": 1}))
    assert prepare(CorpusConfig(**{**cfg.__dict__, "workers": 2})) == out  # workers: same bytes
    assert capsys.readouterr().out == f"data: {out} is up to date (config {cfg.recipe_hash()}), reusing it\n"
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    prepare(CorpusConfig(**{**cfg.__dict__, "seed": 1}), progress=False)  # another recipe: rebuilt
    assert manifest(out)["config"]["seed"] == 1 and (out / "manifest.json").stat().st_mtime_ns != stamp
    # Another tokenizer at the same path: the path is the same, the content is not, so it is rebuilt.
    stamp = (out / "manifest.json").stat().st_mtime_ns
    before = manifest(out)["tokenizer_fingerprint"]
    with open(cfg.tokenizer, "a") as f:
        f.write("\n")
    assert not is_up_to_date(CorpusConfig(**{**cfg.__dict__, "seed": 1}))
    prepare(CorpusConfig(**{**cfg.__dict__, "seed": 1}), progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert manifest(out)["tokenizer_fingerprint"] != before and before.startswith("sha256:")


def test_pydoc_smoke_corpus_and_transformers_tokenizer(tmp_path):
    out = prepare(CorpusConfig(sources=("pydoc::max_docs=30",), out=str(tmp_path / "d"), vocab_size=30000, seq_len=32),
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
