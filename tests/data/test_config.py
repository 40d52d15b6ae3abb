"""CorpusConfig: checked whenever one is built, and a recipe hash that keeps earlier corpora valid."""

from __future__ import annotations

import dataclasses
import re

import pytest

from crammer.config import apply_overrides
from crammer.data.config import ORDERS, PRESETS, CorpusConfig
from crammer.data.prepare import prepare
from crammer.errors import CrammerError
@pytest.mark.parametrize("field, value, message", [
    ("sources", (), "data: no --source given"),
    ("vocab_size", 15, "data.vocab_size: must be >= 16, got 15"),
    ("seq_len", 1, "data.seq_len: must be >= 2, got 1"),
    ("shard_sequences", 0, "data.shard_sequences: must be >= 1, got 0"),
    ("workers", 0, "data.workers: must be >= 1, got 0"),
    ("tokenizer_docs", 0, "data.tokenizer_docs: must be >= 1, got 0"),
    ("filter_ratio", -0.1, "data.filter_ratio: must be >= 0 (0: no filter; none: automatic), got -0.1"),
    ("filter_margin", 0.0, "data.filter_margin: must be > 0, got 0.0"),
    ("normalization", "nfkc", "data.normalization='nfkc' is not one of auto, uncased, cased"),
    ("max_docs", 0, "data.max_docs: must be positive, got 0"),
    ("order", "bogus", "data.order='bogus' is not one of random, easy-first, sentence-length, none"),
])
def test_a_bad_value_fails_when_the_config_is_built(field, value, message):
    with pytest.raises(CrammerError) as e:
        CorpusConfig(**{field: value})
    assert str(e.value) == message
    with pytest.raises(CrammerError, match=re.escape(message)):  # a copy with a bad value is checked too
        dataclasses.replace(PRESETS["smoke"], **{field: value})


def test_none_means_the_default_and_overrides_are_checked():
    cfg = CorpusConfig(workers=None, tokenizer_docs=None, max_docs=None)  # one thread per CPU, all documents
    assert cfg.sources == ("pydoc",) and set(ORDERS) == {"random", "easy-first", "sentence-length", "none"}
    assert apply_overrides(cfg, ["seq_len=64"]).seq_len == 64
    with pytest.raises(CrammerError, match="data.seq_len: must be >= 2, got 1"):
        apply_overrides(cfg, ["seq_len=1"])


def test_recipe_hash_is_stable_and_ignores_out_and_workers():
    """The hash is the cache key of every corpus prepared so far: a new value would rebuild them all (the
    validation split, a new field, did so once; normalization and the filter margins replacing lowercase and
    strip_accents, twice)."""
    assert CorpusConfig().recipe_hash() == "a7dbf213992920f3"
    assert {name: cfg.recipe_hash() for name, cfg in PRESETS.items()} == {
        "smoke": "d0613496fcfc4f26", "bookcorpus-wiki": "93ace1bf7806169f", "c4": "f37cdc6d0553fa00"}
    cfg = PRESETS["smoke"]
    assert dataclasses.replace(cfg, out="elsewhere", workers=3).recipe_hash() == cfg.recipe_hash()
    assert dataclasses.replace(cfg, seed=1).recipe_hash() != cfg.recipe_hash()


def test_bad_config_values(tmp_path):
    with pytest.raises(CrammerError, match="seq_len: must be >= 2"):
        prepare(CorpusConfig(out=str(tmp_path / "o"), seq_len=1), progress=False)
    with pytest.raises(CrammerError, match="workers: must be >= 1"):
        prepare(CorpusConfig(out=str(tmp_path / "o"), workers=0), progress=False)
    with pytest.raises(CrammerError, match="tokenizer_docs: must be >= 1"):
        prepare(CorpusConfig(out=str(tmp_path / "o"), tokenizer_docs=0), progress=False)
    assert not (tmp_path / "o").exists()
