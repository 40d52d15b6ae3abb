"""Helpers shared by the corpus-stage tests: sample documents in every format, independent packing."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from tokenizers import Tokenizer

from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.errors import CrammerError

DOCS = ["First document.\nIt has two paragraphs.", "Second one, with Ünïcode.", "Third: the end!"]
COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress,
            ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def encode_as(fmt: str) -> bytes:
    if fmt == ".txt":
        return "\n\n".join(DOCS).encode() + b"\n"
    if fmt == ".jsonl":
        return "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)).encode()
    if fmt == ".json":
        return json.dumps([{"text": d} for d in DOCS]).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": DOCS}), sink)
    return sink.getvalue().to_pybytes()


def build(tmp_path: Path, sources, tok_file: str, name: str = "out", **kw) -> Path:
    cfg = CorpusConfig(sources=tuple(sources), out=str(tmp_path / name), tokenizer=tok_file, seq_len=4,
                       filter_ratio=0.0, order="none", **kw)
    return prepare(cfg, progress=False)


def error_of(tmp_path: Path, sources, tok_file: str, **kw) -> str:
    with pytest.raises(CrammerError) as e:
        build(tmp_path, sources, tok_file, "bad", **kw)
    assert not (tmp_path / "bad").exists()  # nothing that looks like output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.")]  # no temp folder left
    assert "\n" not in str(e.value)
    return str(e.value)


def tokenizer_path(tok, tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def stream(out: Path, shards: str = "shards") -> np.ndarray:
    """All blocks of a prepared corpus (`validation_shards`: of its validation split), in stored order, as one
    flat token stream."""
    manifest = json.loads((out / "manifest.json").read_text())
    return np.concatenate([np.load(out / s["file"]).ravel() for s in manifest[shards]]).astype(np.int64)


def expected_stream(tok: Tokenizer, docs: list[str], seq_len: int) -> np.ndarray:
    """Independent packing: each document's ids then [SEP], cut to whole blocks."""
    sep = tok.token_to_id("[SEP]")
    ids = [i for d in docs for i in tok.encode(d, add_special_tokens=False).ids + [sep]]
    return np.asarray(ids[: len(ids) // seq_len * seq_len], dtype=np.int64)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def sample_documents(path: Path) -> list[str]:
    """sample.txt parsed independently: blank-line separated articles, paragraphs joined by newlines."""
    docs, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def wiki_slice(shared_data: Path, n: int) -> list[str]:
    with lzma.open(shared_data / "wiki" / "enwiki-2015-00.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def assert_documents_decode(tok: Tokenizer, tokens: np.ndarray, docs: list[str], n: int = 10) -> None:
    """The first `n` documents between [SEP]s decode to their normalized text (spacing aside)."""
    sep = tok.token_to_id("[SEP]")
    bounds = np.flatnonzero(tokens == sep)[:n]
    for doc, a, b in zip(docs, np.concatenate([[0], bounds[:-1] + 1]), bounds):
        assert "".join(tok.decode(tokens[a:b].tolist()).split()) == "".join(tok.normalizer.normalize_str(doc).split())
