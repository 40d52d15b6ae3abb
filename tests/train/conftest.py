"""Fixtures for the pretraining stage: the real Wikipedia sample (and the offline smoke corpus) prepared
once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.runfiles import training_rows, validation_rows
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
    return prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64),
                   progress=False)


@pytest.fixture(scope="session")
def pydoc_corpus(tmp_path_factory) -> Path:
    """CPython's bundled docs (the demo's offline corpus) with a 2000-token vocab in 128-token blocks."""
    out = tmp_path_factory.mktemp("plan-corpus") / "data"
    return prepare(CorpusConfig(sources=("pydoc",), out=str(out), vocab_size=2000), progress=False)


def tiny(overrides=(), tokens: int | None = None, seconds: float | None = None):
    """The tiny preset, a token budget by default (reproducible), every step logged."""
    if tokens is None and seconds is None:
        tokens = 64 * 8 * 40
    return make_pretrain_config("tiny", list(overrides), budget_seconds=seconds, budget_tokens=tokens)


def metrics(run_dir: Path) -> list[dict]:
    """The rows of logged optimizer steps (metrics.jsonl also holds the validation rows)."""
    return training_rows(all_rows(run_dir))


def validation(run_dir: Path) -> list[dict]:
    return validation_rows(all_rows(run_dir))


def all_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_and_optimizer(cfg, vocab_size: int, device: torch.device = torch.device("cpu")):
    """The model and AdamW that pretraining builds for `cfg` (the set-up of crammer.train.setup)."""
    from crammer.train.setup import build_training, model_config_for

    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    training = build_training(cfg, model_config_for(cfg, vocab_size, 1, "seq_len"), special, device)
    return training.model, training.optimizer
