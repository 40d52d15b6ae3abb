"""The output folder: replaced only when safe, checked before any reading, cleaned up when stopped."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from crammer.cli import main
from crammer.data import output, pack
from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.errors import CrammerError, SignalInterrupt
from tests.data.helpers import build, encode_as, manifest


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


def test_bad_out_fails_before_reading_anything(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing.txt")  # listing this source would fail: the --out error must come first
    (tmp_path / "afile").write_text("x")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cases = {str(tmp_path / "afile" / "sub"): f"{tmp_path / 'afile'} is a file",
             str(tmp_path / "afile"): "exists and is a file",
             ".": "is the current folder or one above it",
             "..": "is the current folder or one above it"}
    for out, message in cases.items():
        with pytest.raises(CrammerError) as e:
            prepare(CorpusConfig(sources=(missing,), out=out, vocab_size=100), progress=False)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "afile").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile", "cwd"]


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
    add = pack.BlockWriter.add

    def add_then_terminated(self, tokens):
        add(self, tokens)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pack.BlockWriter, "add", add_then_terminated)
    try:
        with pytest.raises(SignalInterrupt) as stopped:  # a KeyboardInterrupt: Ctrl-C's clean-up runs
            build(tmp_path, [str(shared_data / "wiki" / "sample.txt")], tok_file)
        assert stopped.value.signum == signal.SIGTERM
        assert not ignored and signal.getsignal(signal.SIGTERM) is stand_in  # prepare's handler only while it runs
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] and not (tmp_path / "out").exists()


def test_sigterm_is_an_interrupt_only_inside_the_context():
    def stand_in(signum, frame):  # instead of the default action, which would end pytest too
        pass

    before = signal.signal(signal.SIGTERM, stand_in)
    seen = []

    def in_a_thread():  # only the main thread may set handlers: elsewhere the context changes nothing
        with output.sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    try:
        with output.sigterm_as_interrupt():
            with pytest.raises(SignalInterrupt) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right after the call returns
            assert stopped.value.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is stand_in
        worker = threading.Thread(target=in_a_thread)
        worker.start()
        worker.join()
        assert seen == [stand_in]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_replaceable_output_is_an_empty_folder_or_a_corpus(sample_corpus, tmp_path):
    output.replaceable_output(sample_corpus)
    (tmp_path / "empty").mkdir()
    output.replaceable_output(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    with pytest.raises(CrammerError, match="folder is not empty and is not a prepared corpus"):
        output.replaceable_output(tmp_path / "empty")
