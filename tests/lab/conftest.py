"""Fixtures for the recipe lab: the real Wikipedia sample prepared as two corpora (another tokenizer for the
second), and tiny runs on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare


@pytest.fixture(scope="session")
def corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """`sample.txt` with a 2000-token vocab in 64-token blocks (517 training, 353 validation sequences)."""
    out = tmp_path_factory.mktemp("lab-corpus") / "data"
    return prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64),
                   progress=False)


@pytest.fixture(scope="session")
def other_corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """The same text with a 3000-token vocab: another tokenizer, so another validation set."""
    out = tmp_path_factory.mktemp("lab-other-corpus") / "data"
    return prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=3000, seq_len=64),
                   progress=False)


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny models gain nothing from 2 threads on a shared 2-core box (see tests/train/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
