"""Input formats, source specs, bad input and the CLI (`cram data prepare`, `cram data inspect`)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import platform
import signal
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import crammer.data.prepare as prep
from crammer.cli import main
from crammer.data import sources
from crammer.data.prepare import DataConfig, prepare
from crammer.data.sources import fingerprint, parse_source
from crammer.errors import CrammerError, SignalInterrupt
from tests.data.conftest import expected_stream, manifest, stream

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


@pytest.fixture()
def tok_file(tokenizer, tmp_path) -> str:
    path = tmp_path / "tok.json"
    tokenizer.save(str(path))
    return str(path)


def build(tmp_path: Path, sources, tok_file: str, name: str = "out", **kw) -> Path:
    cfg = DataConfig(sources=tuple(sources), out=str(tmp_path / name), tokenizer=tok_file, seq_len=4,
                     filter_ratio=0.0, order="none", **kw)
    return prepare(cfg, progress=False)


@pytest.mark.parametrize("fmt", [".txt", ".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("compression", ["", ".gz", ".xz", ".zst", ".bz2"])
def test_every_format_and_compression_reads_the_same_documents(fmt, compression, tokenizer, tok_file, tmp_path):
    path = tmp_path / f"docs{fmt}{compression}"
    path.write_bytes(COMPRESS[compression](encode_as(fmt)))
    out = build(tmp_path, [str(path)], tok_file)
    assert manifest(out)["counts"]["documents_read"] == 3
    assert np.array_equal(stream(out), expected_stream(tokenizer, DOCS, 4))


def test_json_lines_in_dot_json_folder_and_glob(tokenizer, tok_file, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_bytes(encode_as(".jsonl"))  # JSON lines in a .json file
    (folder / "sub" / "b.txt.gz").write_bytes(gzip.compress(encode_as(".txt")))
    (folder / "notes.md").write_text("ignored: not a corpus format")
    both = expected_stream(tokenizer, DOCS + DOCS, 4)
    assert np.array_equal(stream(build(tmp_path, [str(folder)], tok_file, "dir")), both)
    assert np.array_equal(stream(build(tmp_path, [str(folder / "**" / "*.*")], tok_file, "glob")), both)


def test_text_field_and_source_cap(tokenizer, tok_file, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    out = build(tmp_path, [f"{path}::max_docs=2"], tok_file, text_field="body")
    assert np.array_equal(stream(out), expected_stream(tokenizer, DOCS[:2], 4))
    assert parse_source("hf:allenai/c4:en@validation::max_docs=5") == parse_source(
        "hf:allenai/c4:en@validation::max_docs=5")
    spec = parse_source("hf:allenai/c4:en@validation::max_docs=5")
    assert (spec.kind, spec.target, spec.hf_config, spec.hf_split, spec.max_docs) == ("hf", "allenai/c4", "en",
                                                                                     "validation", 5)
    with pytest.raises(CrammerError, match="unknown option"):
        parse_source("x.txt::limit=3")


def error_of(tmp_path: Path, sources, tok_file: str, **kw) -> str:
    with pytest.raises(CrammerError) as e:
        build(tmp_path, sources, tok_file, "bad", **kw)
    assert not (tmp_path / "bad").exists()  # nothing that looks like output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.")]  # no temp folder left
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_and_empty_inputs(tok_file, tmp_path):
    assert "no such file or directory" in error_of(tmp_path, [str(tmp_path / "nope.txt")], tok_file)
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    assert "empty corpus" in error_of(tmp_path, [str(tmp_path / "empty.txt")], tok_file)
    (tmp_path / "emptydir").mkdir()
    assert "no supported files" in error_of(tmp_path, [str(tmp_path / "emptydir")], tok_file)
    (tmp_path / "data.csv").write_text("a,b\n")
    assert "unsupported file type" in error_of(tmp_path, [str(tmp_path / "data.csv")], tok_file)
    assert "glob matches no" in error_of(tmp_path, [str(tmp_path / "*.parquet")], tok_file)


def test_undecodable_bytes_error_or_skip(tokenizer, tok_file, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"Good first document.\n\nBroken \xff\xfe bytes here.\nsecond line\n\nGood last document.\n")
    assert f"{path}:3: undecodable bytes" in error_of(tmp_path, [str(path)], tok_file)
    out = build(tmp_path, [str(path)], tok_file, skip_bad=True)
    assert manifest(out)["counts"]["documents_bad"] == 1 and manifest(out)["counts"]["documents_read"] == 2
    expected = expected_stream(tokenizer, ["Good first document.", "Good last document."], 4)
    assert np.array_equal(stream(out), expected)


def test_json_problems_name_file_and_line(tok_file, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"title": "no text here"}\n')
    assert f"{path}:2: no 'text' field (has: title)" in error_of(tmp_path, [str(path)], tok_file)
    path.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert f"{path}:2: field 'text' is int" in error_of(tmp_path, [str(path)], tok_file)
    path.write_text('{"text": "fine fine fine fine"}\n{"text": oops}\n')
    assert f"{path}:2: invalid JSON" in error_of(tmp_path, [str(path)], tok_file)
    out = build(tmp_path, [str(path)], tok_file, skip_bad=True)
    assert manifest(out)["counts"]["documents_bad"] == 1
    bad_parquet = tmp_path / "d.parquet"
    bad_parquet.write_bytes(encode_as(".parquet"))
    assert "no 'body' column" in error_of(tmp_path, [str(bad_parquet)], tok_file, text_field="body")


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst", ".bz2"])
def test_corrupt_compressed_files(suffix, tok_file, tmp_path):
    data = COMPRESS[suffix](encode_as(".jsonl") * 50)
    truncated = tmp_path / f"cut.jsonl{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    assert f"{truncated}: corrupt or truncated file" in error_of(tmp_path, [str(truncated)], tok_file)
    garbage = tmp_path / f"junk.jsonl{suffix}"
    garbage.write_bytes(os.urandom(300))
    assert f"{garbage}: corrupt or truncated file" in error_of(tmp_path, [str(garbage)], tok_file)


def test_failed_rerun_keeps_the_previous_output(tok_file, tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(encode_as(".txt"))
    out = build(tmp_path, [str(good)], tok_file, "keep")
    before = (out / "manifest.json").read_bytes()
    bad = tmp_path / "later-bad.txt"
    bad.write_bytes(encode_as(".txt") + b"\n\nbroken \xff\n")
    with pytest.raises(CrammerError, match="undecodable"):
        build(tmp_path, [str(bad)], tok_file, "keep")
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")) == []


def test_hub_source_offline_is_a_clear_error(tok_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = error_of(tmp_path, ["hf:crammer-test/does-not-exist@train"], tok_file)
    assert msg.startswith("hf:crammer-test/does-not-exist: cannot stream from the Hugging Face hub")


def test_bad_tokenizer_and_config_values(tmp_path):
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(CrammerError, match="not a tokenizers JSON file"):
        prepare(DataConfig(out=str(tmp_path / "o"), tokenizer=str(tmp_path / "t.json")), progress=False)
    with pytest.raises(CrammerError, match="no such tokenizer file"):
        prepare(DataConfig(out=str(tmp_path / "o"), tokenizer=str(tmp_path / "missing.json")), progress=False)
    with pytest.raises(CrammerError, match="seq_len: must be >= 2"):
        prepare(DataConfig(out=str(tmp_path / "o"), seq_len=1), progress=False)
    with pytest.raises(CrammerError, match="workers: must be >= 1"):
        prepare(DataConfig(out=str(tmp_path / "o"), workers=0), progress=False)
    with pytest.raises(CrammerError, match="tokenizer_docs: must be >= 1"):
        prepare(DataConfig(out=str(tmp_path / "o"), tokenizer_docs=0), progress=False)


def test_cli_prepare_and_inspect(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["data", "prepare", "--source", "pydoc::max_docs=20", "--out", str(out), "--vocab-size", "600",
            "--seq-len", "32", "--order", "easy-first", "--dedup", "--seed", "3", "--filter-ratio", "0.4",
            "--workers", "2", "--quiet", "ascii_only=true", "shard_sequences=50"]
    assert main(argv) == 0
    m = manifest(out)
    cfg = m["config"]
    assert (cfg["order"], cfg["dedup"], cfg["seed"], cfg["ascii_only"], cfg["shard_sequences"]) == (
        "easy-first", True, 3, True, 50)
    assert m["counts"]["documents_read"] == 20 and len(m["shards"]) > 1
    assert "Replace" in json.dumps(m["normalizer"])  # ascii_only made it into the tokenizer
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "-n", "2"]) == 0
    shown = capsys.readouterr().out
    assert f"{m['num_sequences']} sequences x 32 tokens" in shown and "smoke corpus" in shown
    assert "documents_read=20" in shown and "--- sequence 1 ---" in shown and "[SEP]" in shown


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "--source", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cram: error: ") and err.count("\n") == 1 and "missing.jsonl" in err
    assert main(["data", "prepare", "--out", str(tmp_path / "o")]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["data", "prepare", "--preset", "smoke", "--out", str(tmp_path / "o"), "bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "not a prepared corpus" in capsys.readouterr().err


def test_smoke_preset_is_the_demo_corpus(tmp_path):
    out = tmp_path / "smoke"
    assert main(["data", "prepare", "--preset", "smoke", "--out", str(out), "--quiet", "--max-docs", "15"]) == 0
    m = manifest(out)
    assert m["sources"] == ["pydoc"] and m["config"]["vocab_size"] == 8192 and m["smoke_corpus"]


def test_out_replaces_only_an_empty_folder_or_a_prepared_corpus(tok_file, tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_bytes(encode_as(".txt"))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    argv = ["data", "prepare", "--source", str(good), "--tokenizer", tok_file, "--seq-len", "4", "--filter-ratio", "0",
            "--quiet"]
    assert main([*argv, "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{precious}: folder is not empty and is not a prepared corpus" in err
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".precious.")]
    (tmp_path / "afile").write_text("data")
    assert main([*argv, "--out", str(tmp_path / "afile")]) == 2
    assert "afile: exists and is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--out", str(empty)]) == 0 and manifest(empty)["counts"]["documents_read"] == 3
    assert main([*argv, "--out", str(empty), "--seed", "1"]) == 0  # an earlier corpus is replaced
    assert manifest(empty)["config"]["seed"] == 1


def test_output_inside_the_source_folder_is_not_read_back(tokenizer, tok_file, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    (corpus / ".git").mkdir(parents=True)
    (corpus / "a.jsonl").write_bytes(encode_as(".jsonl"))
    (corpus / ".notes.txt").write_text("hidden: skipped")
    (corpus / ".git" / "log.txt").write_text("hidden folder: skipped")
    expected = expected_stream(tokenizer, DOCS, 4)
    runs = {}
    for source in (str(corpus), str(corpus / "**" / "*.json*")):
        cfg = DataConfig(sources=(source,), out=str(corpus / "prepared"), tokenizer=tok_file, seq_len=4,
                         filter_ratio=0.0, order="none")
        out = prepare(cfg, progress=False)
        assert np.array_equal(stream(out), expected)
        runs[source] = (cfg, (out / "manifest.json").stat().st_mtime_ns)
    monkeypatch.setattr(prep, "load_tokenizer", lambda *a: pytest.fail("rebuilt instead of reusing the cache"))
    cfg, stamp = runs[str(corpus / "**" / "*.json*")]
    assert prepare(cfg, progress=False) == corpus / "prepared"  # its own .json files are not new input
    assert (corpus / "prepared" / "manifest.json").stat().st_mtime_ns == stamp


def test_bad_out_fails_before_reading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "read_documents", lambda *a: pytest.fail("read documents before checking --out"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cases = {str(tmp_path / "afile" / "sub"): f"{tmp_path / 'afile'} is a file",
             str(tmp_path / "afile"): "exists and is a file",
             ".": "is the current folder or one above it",
             "..": "is the current folder or one above it"}
    for out, message in cases.items():
        with pytest.raises(CrammerError) as e:
            prepare(DataConfig(sources=("pydoc",), out=out, vocab_size=100), progress=False)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "afile").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile", "cwd"]


def test_unopenable_file_is_a_one_line_error(tok_file, tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_bytes(encode_as(".txt"))

    def denied(p):  # what open() raises on a file without read permission (root would not see it)
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(sources, "_open_binary", denied)
    assert error_of(tmp_path, [str(path)], tok_file) == f"{path}: cannot open (Permission denied)"


def test_stale_staging_folders_of_this_output_are_removed(tok_file, tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(encode_as(".txt"))
    stale = Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path))  # named as atomic_dir names it
    (stale / "shard-00000.npy").write_bytes(bytes(1000))
    others = [tmp_path / ".out.v2.abc123.tmp", tmp_path / ".outer.abc123.tmp"]  # outputs `out.v2`, `outer`
    for other in others:
        other.mkdir()
    build(tmp_path, [str(good)], tok_file, "out")
    assert not stale.exists() and all(other.is_dir() for other in others)


def test_sigterm_removes_the_staging_folder(tok_file, shared_data, tmp_path, monkeypatch):
    """SIGTERM used to end the process on the spot, leaving a corpus-sized `.out.*.tmp` behind."""
    ignored = []

    def stand_in(signum, frame):  # instead of the default action, which would end pytest too
        ignored.append(signum)

    before = signal.signal(signal.SIGTERM, stand_in)
    add = prep.BlockWriter.add

    def add_then_terminated(self, tokens):
        add(self, tokens)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(prep.BlockWriter, "add", add_then_terminated)
    try:
        with pytest.raises(SignalInterrupt) as stopped:  # a KeyboardInterrupt: Ctrl-C's clean-up runs
            build(tmp_path, [str(shared_data / "wiki" / "sample.txt")], tok_file)
        assert stopped.value.signum == signal.SIGTERM
        assert not ignored and signal.getsignal(signal.SIGTERM) is stand_in  # prepare's handler only while it runs
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] and not (tmp_path / "out").exists()


def test_pydoc_and_hub_sources_have_fingerprints(tok_file, tmp_path, monkeypatch):
    """With an empty fingerprint a cached corpus was reused after its source changed."""
    [pydoc] = fingerprint(parse_source("pydoc::max_docs=5"))
    assert pydoc["python"] == platform.python_version() and Path(pydoc["file"]).name.startswith("topics.py")
    [hub] = fingerprint(parse_source("hf:allenai/c4:en@validation"))
    assert (hub["hf"], hub["config"], hub["split"]) == ("allenai/c4", "en", "validation") and "name" in hub["cached_by"]
    local = tmp_path / "ds"
    local.mkdir()
    (local / "train.jsonl").write_bytes(encode_as(".jsonl"))
    first = fingerprint(parse_source(f"hf:{local}"))
    assert first[1]["file"] == str((local / "train.jsonl").resolve())
    (local / "train.jsonl").write_bytes(encode_as(".jsonl") * 2)
    assert fingerprint(parse_source(f"hf:{local}")) != first
    # a new Python (so new pydoc topics) rebuilds the smoke corpus
    out = build(tmp_path, ["pydoc::max_docs=5"], tok_file)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build(tmp_path, ["pydoc::max_docs=5"], tok_file) == out  # unchanged: reused
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(sources.platform, "python_version", lambda: "9.99.0")
    build(tmp_path, ["pydoc::max_docs=5"], tok_file)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
