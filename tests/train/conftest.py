"""Fixtures for the pretraining stage: the real Wikipedia sample prepared once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crammer.data.prepare import DataConfig, prepare
from crammer.train.config import make_pretrain_config


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny models gain nothing from 2 threads, and on a shared 2-core CI box OpenMP's spinning
    teams can stall for seconds; timing-based tests (the wall-clock budget) need steady steps."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(wiki_sample: Path, tmp_path_factory) -> Path:
    """`sample.txt` with a 2000-token vocab in 64-token blocks (~8k sequences)."""
    out = tmp_path_factory.mktemp("train-corpus") / "data"
    return prepare(DataConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64), progress=False)


def tiny(overrides=(), tokens: int | None = None, seconds: float | None = None):
    """The tiny preset, a token budget by default (reproducible), every step logged."""
    if tokens is None and seconds is None:
        tokens = 64 * 8 * 40
    return make_pretrain_config("tiny", list(overrides), budget_seconds=seconds, budget_tokens=tokens)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
