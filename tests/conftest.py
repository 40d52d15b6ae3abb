"""Shared test fixtures: paths to the real data beside the repository (never copied into it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: English Wikipedia shards (`wiki/`) and GLUE tasks (`glue/`)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wiki_sample(shared_data: Path) -> Path:
    """~2 MB of Wikipedia as plain text, one paragraph per line, blank line between articles."""
    return shared_data / "wiki" / "sample.txt"


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    """GLUE tasks in the standard `glue_data` layout (CoLA, SST-2, MRPC, STS-B, RTE, WNLI)."""
    return shared_data / "glue"
