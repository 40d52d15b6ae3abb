"""Source specs, folders and globs, caps, fingerprints (the cache key) and hub sources."""

from __future__ import annotations

import gzip
import json
import os
import platform
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from dataclasses import dataclass

from crammer.data import sources
from crammer.data.config import CorpusConfig
from crammer.data.formats import BadRecord, Record
from crammer.data.prepare import prepare
from crammer.data.sources import FileSource, HubSource, PydocSource, parse_source
from crammer.errors import CrammerError
from tests.data.helpers import DOCS, build, encode_as, error_of, expected_stream, stream


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
    assert spec == HubSource("hf:allenai/c4:en@validation::max_docs=5", name="allenai/c4", config="en",
                             split="validation", max_docs=5)
    with pytest.raises(CrammerError, match="unknown option"):
        parse_source("x.txt::limit=3")


def test_missing_and_empty_inputs(tok_file, tmp_path):
    assert "no such file or directory" in error_of(tmp_path, [str(tmp_path / "nope.txt")], tok_file)
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    assert "empty corpus" in error_of(tmp_path, [str(tmp_path / "empty.txt")], tok_file)
    (tmp_path / "emptydir").mkdir()
    assert "no supported files" in error_of(tmp_path, [str(tmp_path / "emptydir")], tok_file)
    (tmp_path / "data.csv").write_text("a,b\n")
    assert "unsupported file type" in error_of(tmp_path, [str(tmp_path / "data.csv")], tok_file)
    assert "glob matches no" in error_of(tmp_path, [str(tmp_path / "*.parquet")], tok_file)


def test_a_fifo_or_a_link_loop_says_what_it_is(tok_file, tmp_path):
    """pathlib's tests only say "not a file": a named pipe or a link to itself is no missing file."""
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    assert error_of(tmp_path, [str(fifo)], tok_file) == f"{fifo}: is a FIFO (named pipe), not a file"
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    assert error_of(tmp_path, [str(loop)], tok_file) == (f"{loop}: symbolic link loop (a link that leads back to "
                                                         "itself), not a file")
    dangling = tmp_path / "gone.txt"
    dangling.symlink_to(tmp_path / "deleted.txt")
    assert error_of(tmp_path, [str(dangling)], tok_file) == f"{dangling}: no such file or directory"


def test_hub_source_offline_is_a_clear_error(tok_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = error_of(tmp_path, ["hf:crammer-test/does-not-exist@train"], tok_file)
    assert msg.startswith("hf:crammer-test/does-not-exist: cannot stream from the Hugging Face hub")


def test_output_inside_the_source_folder_is_not_read_back(tokenizer, tok_file, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / ".git").mkdir(parents=True)
    (corpus / "a.jsonl").write_bytes(encode_as(".jsonl"))
    (corpus / ".notes.txt").write_text("hidden: skipped")
    (corpus / ".git" / "log.txt").write_text("hidden folder: skipped")
    expected = expected_stream(tokenizer, DOCS, 4)
    runs = {}
    for source in (str(corpus), str(corpus / "**" / "*.json*")):
        cfg = CorpusConfig(sources=(source,), out=str(corpus / "prepared"), tokenizer=tok_file, seq_len=4,
                           filter_ratio=0.0, order="none")
        out = prepare(cfg, progress=False)
        assert np.array_equal(stream(out), expected)
        runs[source] = (cfg, (out / "manifest.json").stat().st_mtime_ns)
    cfg, stamp = runs[str(corpus / "**" / "*.json*")]
    capsys.readouterr()
    assert prepare(cfg) == corpus / "prepared"  # its own .json files are not new input
    reused = f"data: {corpus / 'prepared'} is up to date (config {cfg.recipe_hash()}), reusing it\n"
    assert capsys.readouterr().out == reused
    assert (corpus / "prepared" / "manifest.json").stat().st_mtime_ns == stamp


def test_pydoc_and_hub_sources_have_fingerprints(tok_file, tmp_path, monkeypatch):
    """With an empty fingerprint a cached corpus was reused after its source changed."""
    [pydoc] = parse_source("pydoc::max_docs=5").fingerprint()
    assert pydoc["python"] == platform.python_version() and Path(pydoc["file"]).name.startswith("topics.py")
    [hub] = parse_source("hf:allenai/c4:en@validation").fingerprint()
    assert (hub["hf"], hub["config"], hub["split"]) == ("allenai/c4", "en", "validation") and "name" in hub["cached_by"]
    local = tmp_path / "ds"
    local.mkdir()
    (local / "train.jsonl").write_bytes(encode_as(".jsonl"))
    first = parse_source(f"hf:{local}").fingerprint()
    assert first[1]["file"] == str((local / "train.jsonl").resolve())
    (local / "train.jsonl").write_bytes(encode_as(".jsonl") * 2)
    assert parse_source(f"hf:{local}").fingerprint() != first
    # a new Python (so new pydoc topics) rebuilds the smoke corpus
    out = build(tmp_path, ["pydoc::max_docs=5"], tok_file)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build(tmp_path, ["pydoc::max_docs=5"], tok_file) == out  # unchanged: reused
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(platform, "python_version", lambda: "9.99.0")
    build(tmp_path, ["pydoc::max_docs=5"], tok_file)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp


def test_each_kind_of_spec_parses_to_its_source():
    assert parse_source("pydoc::max_docs=3") == PydocSource("pydoc::max_docs=3", max_docs=3)
    assert parse_source(" data/*.txt ") == FileSource(" data/*.txt ", path="data/*.txt")
    assert parse_source("hf:allenai/c4") == HubSource("hf:allenai/c4", name="allenai/c4", config=None, split="train")
    assert PydocSource("pydoc").smoke and not FileSource("a", "a").smoke and FileSource("a", "a").tracks_bytes
    for spec, message in (("x.txt::max_docs=a", "max_docs must be an integer, got 'a'"),
                          ("x.txt::max_docs=0", "max_docs must be positive"), ("  ", "empty path"),
                          ("hf:", "expected hf:NAME[:CONFIG][@SPLIT]")):
        with pytest.raises(CrammerError) as e:
            parse_source(spec)
        assert str(e.value) == f"source {spec!r}: {message}"


def test_fingerprints_keep_their_stored_form(tmp_path):
    """They are stored in manifests and compared with the inputs of a new run: a new form would rebuild every corpus."""
    path = tmp_path / "a.txt"
    path.write_bytes(encode_as(".txt"))
    st = path.stat()
    assert parse_source(str(path)).fingerprint() == [{"file": str(path.resolve()), "bytes": st.st_size,
                                                      "mtime_ns": st.st_mtime_ns}]
    assert parse_source("hf:allenai/c4:en").fingerprint() == [{
        "hf": "allenai/c4", "config": "en", "split": "train",
        "cached_by": "name (no hub revision offline; remove the output to refresh)"}]
    [pydoc] = parse_source("pydoc").fingerprint()
    assert sorted(pydoc) == ["bytes", "file", "mtime_ns", "python"]


@dataclass(frozen=True)
class Listed(sources.Source):
    """A source of given records, to watch `read_documents` apply the caps and the bad-record policy."""

    spec: str
    items: tuple
    max_docs: int | None = None

    def fingerprint(self) -> list[dict]:
        return []

    def documents(self, text_field: str, stats: sources.ReadStats) -> Iterator[Record]:
        yield from ((f"{self.spec}:{i}", item) for i, item in enumerate(self.items))


def test_read_documents_applies_the_caps_and_the_bad_record_policy():
    bad = BadRecord("b:1: invalid JSON (Expecting value)")
    first, second = Listed("a", ("a0", " ", "a2", "a3"), max_docs=2), Listed("b", ("b0", bad, "b2", "b3"))
    stats = sources.ReadStats()
    assert list(sources.read_documents([first, second], "text", True, 5, stats)) == ["a0", "a2", "b0", "b2", "b3"]
    assert (stats.documents_read, stats.documents_empty, stats.documents_bad) == (5, 1, 1)
    assert stats.per_source == {"a": 2, "b": 3} and stats.characters_read == 10
    capped = list(sources.read_documents([first, second], "text", True, 3, sources.ReadStats()))
    assert capped == ["a0", "a2", "b0"]
    with pytest.raises(CrammerError, match="^b:1: invalid JSON"):
        list(sources.read_documents([second], "text", False, None, sources.ReadStats()))


def test_a_source_given_twice_is_refused(wiki_sample, tok_file, tmp_path, capsys):
    """Before: read twice silently, `documents_per_source` the count of one pass (assigned, not added), and a
    document held out for validation could be trained on through its twin."""
    from crammer.cli import main

    folder = tmp_path / "wiki"
    folder.mkdir()
    part = folder / "part.txt"
    part.write_text(wiki_sample.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    args = ["data", "prepare", "--tokenizer", tok_file, "--out", str(tmp_path / "data"), "--quiet", "--seq-len", "16"]
    assert main([*args, "--source", str(part), "--source", f"{part}::max_docs=3"]) == 2
    assert capsys.readouterr().err == (f"cram: error: --source {part} given twice: its documents would be read twice "
                                       "(and a held-out one trained on); give each source once (cap it with "
                                       "::max_docs=N)\n")
    assert error_of(tmp_path, [str(folder), str(tmp_path / "wiki" / "*.txt")], tok_file) == (
        f"{part}: named by two sources ({folder} and {tmp_path / 'wiki' / '*.txt'}): its documents would be read "
        "twice (and a held-out one trained on); give each file once")
    assert not (tmp_path / "data").exists()


def test_a_lone_surrogate_in_jsonl_is_repaired_counted_and_said(wiki_sample, tok_file, tmp_path, capsys):
    """JSON's `"\\ud800"` decodes to a lone surrogate; before: `UnicodeEncodeError ... surrogates not allowed` in the
    tokenizer trainer (`--skip-bad` too), `TypeError: TextEncodeInput must be ...` with `--tokenizer`."""
    from crammer.cli import main

    articles = [line for line in wiki_sample.read_text(encoding="utf-8")[:60_000].splitlines() if len(line) > 300]
    articles[2] = articles[2][:200] + "\ud83d" + articles[2][200:]  # an emoji cut in half by a dump
    source = tmp_path / "dump.jsonl"
    source.write_text("".join(json.dumps({"text": a}) + "\n" for a in articles), encoding="ascii")
    assert "\\ud83d" in source.read_text()
    for extra in (["--vocab-size", "300"], ["--tokenizer", tok_file], ["--skip-bad", "--vocab-size", "300"]):
        out = tmp_path / f"data{len(extra)}{extra[0]}"
        assert main(["data", "prepare", "--source", str(source), "--out", str(out), "--quiet", "--seq-len", "32", "--filter-ratio", "0",
                     *extra]) == 0
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        assert counts["documents_repaired"] == 1 and counts["documents_read"] == len(articles)
        assert capsys.readouterr().err == (f"data: warning: {out}: 1 document(s) held lone surrogates (invalid "
                                           "Unicode, e.g. JSON's \"\\ud800\"); each was replaced by U+FFFD\n")
