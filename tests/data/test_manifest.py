"""The manifest: one schema for its writer and its readers, old corpora still readable, shards inside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crammer.cli import main
from crammer.data.config import CorpusConfig
from crammer.data.manifest import MANIFEST, Counts, Manifest, Shard
from crammer.data.packed import PackedCorpus
from crammer.data.prepare import is_up_to_date
from crammer.errors import CrammerError
def copy_with(corpus: Path, folder: Path, edit) -> Path:
    """A copy of `corpus` whose manifest `edit` changed in place."""
    shutil.copytree(corpus, folder)
    data = json.loads((folder / MANIFEST).read_text())
    edit(data)
    (folder / MANIFEST).write_text(json.dumps(data))
    return folder


def test_written_and_read_back_exactly(sample_corpus, tmp_path):
    on_disk = (sample_corpus / MANIFEST).read_bytes()
    manifest = Manifest.read(sample_corpus)
    assert manifest.to_json() == json.loads(on_disk)
    assert isinstance(manifest.counts, Counts) and all(isinstance(s, Shard) for s in manifest.shards)
    manifest.write(tmp_path)
    assert (tmp_path / MANIFEST).read_bytes() == on_disk
    assert PackedCorpus(sample_corpus).manifest == manifest


def test_a_corpus_written_before_the_later_keys_still_loads_and_stays_cached(sample_corpus, tmp_path, capsys):
    def make_old(data):
        for key in ("unk_fraction", "tokenizer_fingerprint", "vocab_size_requested", "tokenizer_seconds"):
            del data[key]
        del data["counts"]["tokens_unk"]

    old = copy_with(sample_corpus, tmp_path / "old", make_old)
    corpus = PackedCorpus(old)
    assert len(corpus) == len(PackedCorpus(sample_corpus)) and corpus.manifest.unk_fraction is None
    assert (corpus.manifest.tokenizer_fingerprint, corpus.manifest.counts.tokens_unk) == (None, 0)
    config = corpus.manifest.config
    cfg = CorpusConfig(**{**config, "sources": tuple(config["sources"]), "out": str(old)})
    assert is_up_to_date(cfg)  # a trained tokenizer had no fingerprint then either
    assert main(["data", "inspect", str(old), "-n", "0"]) == 0
    assert "(tokenizer 0.0s)" in capsys.readouterr().out


@pytest.mark.parametrize("file", ["../outside.npy", "shards/../../outside.npy", "/tmp/outside.npy", "", "."])
def test_a_shard_outside_the_corpus_folder_is_refused(file, sample_corpus, tmp_path):
    corpus = copy_with(sample_corpus, tmp_path / "c", lambda data: data["shards"][0].update(file=file))
    with pytest.raises(CrammerError) as e:
        PackedCorpus(corpus)
    assert str(e.value) == (f"{corpus / MANIFEST}: shard {file!r} is outside the corpus folder "
                            "(must be a relative path in it)")


def test_missing_or_malformed_manifests_name_the_file(sample_corpus, tmp_path):
    path = tmp_path / "c" / MANIFEST
    with pytest.raises(CrammerError, match=f"^{tmp_path}: not a prepared corpus \\(no manifest.json\\); run"):
        PackedCorpus(tmp_path)
    cases = {
        "format": (lambda data: data.update(format="crammer-packed-v0"), "unknown format 'crammer-packed-v0'"),
        "key": (lambda data: data.pop("seq_len"), "no 'seq_len' (a truncated or hand-edited manifest?)"),
        "count": (lambda data: data["counts"].pop("tokens"), "no 'counts.tokens'"),
        "shards": (lambda data: data.update(shards={}), "'shards' is dict, expected list"),
        "length": (lambda data: data["shards"][0].update(num_sequences="7"), "num_sequences is '7', expected"),
    }
    for name, (edit, message) in cases.items():
        corpus = copy_with(sample_corpus, tmp_path / name, edit)
        with pytest.raises(CrammerError) as e:
            PackedCorpus(corpus)
        assert str(e.value).startswith(f"{corpus / MANIFEST}: ") and message in str(e.value), name
    shutil.copytree(sample_corpus, path.parent)
    path.write_text("[1, 2]")
    with pytest.raises(CrammerError, match="not a manifest \\(a JSON object expected, got list\\)"):
        Manifest.read(path.parent)
    path.write_text("{")
    with pytest.raises(CrammerError, match=f"^{path}:1: invalid JSON"):
        Manifest.read(path.parent)


def test_a_shard_that_does_not_match_the_manifest(sample_corpus, tmp_path):
    corpus = copy_with(sample_corpus, tmp_path / "c", lambda data: data["shards"][0].update(num_sequences=1))
    with pytest.raises(CrammerError, match="shard-00000.npy: shape .* does not match the manifest \\(1, 64\\)"):
        PackedCorpus(corpus)
