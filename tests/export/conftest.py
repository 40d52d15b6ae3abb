"""Fixtures of the export tests: tiny models pretrained for a few steps on the real Wikipedia sample, as
`cram pretrain` leaves them in RUN_DIR/final (weights, code, tokenizer, model card)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.pipeline.pretrain import pretrain
from crammer.train.config import make_pretrain_config

TINY = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=256"]


@pytest.fixture(scope="session")
def export_corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """The Wikipedia sample, a 2000-token vocabulary, 64-token blocks."""
    out = tmp_path_factory.mktemp("export-corpus") / "data"
    return prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000,
                                seq_len=64), progress=False)


def pretrained(corpus: Path, run_dir: Path, model_preset: str, overrides=()) -> Path:
    """RUN_DIR/final of a few optimizer steps of the tiny recipe on `corpus` with the given model preset."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = make_pretrain_config("tiny", [f"model={model_preset}", *TINY, *overrides, "eval.sequences=8"],
                                   budget_tokens=64 * 8 * 6)
        return pretrain(cfg, corpus, run_dir)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def modernbert_final(export_corpus: Path, tmp_path_factory) -> Path:
    """ModernBERT-shaped, positions up to 256 (so 8, 128 and 256 are three lengths to check)."""
    return pretrained(export_corpus, tmp_path_factory.mktemp("modernbert") / "run", "modernbert",
                      ["model.max_position_embeddings=256"])


@pytest.fixture(scope="session")
def crammed_final(export_corpus: Path, tmp_path_factory) -> Path:
    """The default crammed-BERT architecture."""
    return pretrained(export_corpus, tmp_path_factory.mktemp("crammed") / "run", "crammed-bert")
