"""Input formats and compressions, and what a bad record or a bad file gives."""

from __future__ import annotations

import os

import numpy as np
import pytest

from crammer.data import formats
from crammer.errors import CrammerError
from tests.data.helpers import COMPRESS, DOCS, build, encode_as, error_of, expected_stream, manifest, stream


@pytest.mark.parametrize("fmt", [".txt", ".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("compression", ["", ".gz", ".xz", ".zst", ".bz2"])
def test_every_format_and_compression_reads_the_same_documents(fmt, compression, tokenizer, tok_file, tmp_path):
    path = tmp_path / f"docs{fmt}{compression}"
    path.write_bytes(COMPRESS[compression](encode_as(fmt)))
    out = build(tmp_path, [str(path)], tok_file)
    assert manifest(out)["counts"]["documents_read"] == 3
    assert np.array_equal(stream(out), expected_stream(tokenizer, DOCS, 4))


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
    assert f"{path}:2: invalid JSON (Expecting value: line 2 column 10)" == error_of(tmp_path, [str(path)], tok_file)
    path.write_text('{"text": "fine"}\n{"text": "cut short')  # a file cut mid-record: the message is whole
    assert error_of(tmp_path, [str(path)], tok_file) == (f"{path}:2: invalid JSON (Unterminated string starting "
                                                         "at: line 2 column 10)")
    path.write_text('{"text": "fine fine fine fine"}\n{"text": oops}\n')
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


def test_unopenable_file_is_a_one_line_error(tok_file, tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_bytes(encode_as(".txt"))

    def denied(p):  # what open() raises on a file without read permission (root would not see it)
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(formats, "_open_binary", denied)
    assert error_of(tmp_path, [str(path)], tok_file) == f"{path}: cannot open (Permission denied)"


def test_a_file_gone_since_the_listing_cannot_be_opened(tmp_path):
    gone = tmp_path / "gone.jsonl.gz"
    with pytest.raises(CrammerError) as e, formats.open_file(gone):
        pass
    assert str(e.value) == f"{gone}: cannot open (No such file or directory)"


@pytest.mark.parametrize("fmt", [".txt", ".jsonl", ".json", ".parquet"])
def test_records_name_their_place_and_bad_ones_come_out_in_place(fmt, tmp_path):
    path = tmp_path / f"docs{fmt}.gz"
    path.write_bytes(COMPRESS[".gz"](encode_as(fmt)))
    with formats.open_file(path) as (raw, stream):
        records = list(formats.file_records(path, stream, "text"))
        assert raw.tell() == path.stat().st_size  # the progress of reading is the raw file's position
    assert [text for _, text in records] == DOCS
    where = {".txt": [f"{path}:1", f"{path}:4", f"{path}:6"], ".jsonl": [f"{path}:{i}" for i in (1, 2, 3)],
             ".json": [f"{path}[{i}]" for i in range(3)], ".parquet": [f"{path}[row {i}]" for i in (1, 2, 3)]}
    assert [w for w, _ in records] == where[fmt]
    assert formats.is_supported(path) and not formats.is_supported(tmp_path / "notes.md.gz")
    lines = tmp_path / "mixed.jsonl"
    lines.write_text('{"text": "fine"}\n[1]\n{"body": "x"}\n')
    with formats.open_file(lines) as (_, stream):
        texts = [text for _, text in formats.file_records(lines, stream, "text")]
    assert texts[0] == "fine" and all(isinstance(t, formats.BadRecord) for t in texts[1:])
    assert str(texts[1]) == f"{lines}:2: no 'text' field (has: list); set --text-field"
