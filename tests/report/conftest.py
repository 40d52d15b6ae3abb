"""Fixtures for `cram run` / `cram report` / `cram plan`: the offline smoke corpus, prepared once."""

from __future__ import annotations

from pathlib import Path

import pytest

from crammer.data.prepare import DataConfig, prepare


@pytest.fixture(scope="session")
def pydoc_corpus(tmp_path_factory) -> Path:
    """CPython's bundled docs (the demo's offline corpus) with a 2000-token vocab in 128-token blocks."""
    out = tmp_path_factory.mktemp("report-corpus") / "data"
    return prepare(DataConfig(sources=("pydoc",), out=str(out), vocab_size=2000), progress=False)
