"""Reading one input file: `.txt` (blank-line separated documents), `.jsonl`, `.json` (JSON lines or one
array of records), `.parquet`, each optionally compressed (`.gz`, `.xz`, `.zst`, `.bz2`).

Records come out as (location, text) in file order, the location naming file:line (or [index], [row N])
for error messages. An unusable record (undecodable bytes, invalid JSON, no text field) comes out as a
`BadRecord` in its place, so that the caller decides between failing and skipping; a file that cannot
be read on (corrupt, truncated) is a CrammerError.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

from crammer.errors import CrammerError
from crammer.io import invalid_json

COMPRESSIONS = (".gz", ".xz", ".zst", ".bz2")
FORMATS = (".txt", ".jsonl", ".json", ".parquet")
TEXT_BLOCK_CHARS = 1 << 22  # a .txt block without a blank line is cut into documents of about this size


# A lone UTF-16 surrogate: JSON's `"\ud800"` escape decodes to one, and no UTF-8 encoder (tokenizers, files)
# takes it. Real dumps have them (text cut inside an emoji's pair).
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text`, or None (at once for ASCII text)."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return found.start() if found else None


def repair_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, the replacement character UTF-8 decoders use."""
    return _SURROGATE.sub("\ufffd", text)


class BadRecord(Exception):
    """One unusable record; the reader raises it as a CrammerError or skips it."""


Record = tuple[str, Union[str, BadRecord]]  # (location, text or what is wrong with it)


def is_supported(path: Path) -> bool:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS


@contextlib.contextmanager
def open_file(path: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(raw file, decompressed stream): the raw file's position is how far into the on-disk bytes reading got."""
    try:
        raw, stream = _open_binary(path)
    except OSError as e:  # unreadable (permissions), or gone since the listing
        raise CrammerError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        yield raw, stream
    finally:
        stream.close()
        raw.close()


def file_records(path: Path, stream: BinaryIO, text_field: str) -> Iterator[Record]:
    """The records of the file `path`, read from its decompressed `stream`; the format is the suffix's."""
    fmt = Path(path.stem).suffix if path.suffix in COMPRESSIONS else path.suffix
    try:
        if fmt == ".parquet":
            yield from _parquet_records(path, stream, text_field)
        elif fmt == ".txt":
            for lineno, doc in _text_docs(_numbered_lines(stream), str(path)):
                yield f"{path}:{lineno}", doc
        elif fmt == ".json":
            buffered = _buffered(stream)
            if buffered.peek(64).lstrip().startswith(b"["):
                yield from _json_array_records(path, buffered, text_field)
            else:
                for lineno, doc in _json_line_docs(enumerate(buffered, 1), str(path), text_field):
                    yield f"{path}:{lineno}", doc
        else:
            for lineno, doc in _json_line_docs(_numbered_lines(stream), str(path), text_field):
                yield f"{path}:{lineno}", doc
    except _corrupt_errors() as e:
        raise CrammerError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from None


def record_text(record: Any, where: str, text_field: str) -> str | BadRecord:
    """The text field of one JSON-like record."""
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        return BadRecord(f"{where}: no {text_field!r} field (has: {keys}); set --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        return BadRecord(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


def _open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """Open (raw file, decompressed stream) by suffix."""
    raw = open(path, "rb")
    suffix = path.suffix
    if suffix == ".gz":
        return raw, gzip.GzipFile(fileobj=raw)
    if suffix == ".xz":
        return raw, lzma.LZMAFile(raw)
    if suffix == ".bz2":
        return raw, bz2.BZ2File(raw)
    if suffix == ".zst":
        return raw, io.BufferedReader(_StrictZstdReader(raw), 1 << 20)
    return raw, raw


class _StrictZstdReader(io.RawIOBase):
    """Multi-frame zstd decompression that, unlike `zstandard`'s stream reader, fails on truncation."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._frame_open = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = self._raw.read(1 << 20)
            if not data:
                if self._frame_open:
                    raise self._zstd.ZstdError("truncated zstd frame")
                return 0
            while data:
                self._frame_open = True
                self._pending += self._dec.decompress(data)
                data = b""
                if self._dec.eof:  # a frame ended: the rest of the chunk starts a new one
                    data = self._dec.unused_data
                    self._dec = self._zstd.ZstdDecompressor().decompressobj()
                    self._frame_open = False
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (gzip.BadGzipFile, lzma.LZMAError, EOFError, OSError, zstandard.ZstdError)


def _buffered(stream: BinaryIO) -> io.BufferedReader:
    return stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream, 1 << 20)


def _numbered_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    return enumerate(_buffered(stream), 1)


def _text_docs(lines: Iterator[tuple[int, bytes]], where: str,
               block_chars: int = TEXT_BLOCK_CHARS) -> Iterator[tuple[int, str | BadRecord]]:
    """Blank-line separated documents; a document's lines are joined with '\\n'.

    A block that reaches `block_chars` characters without a blank line (a file of one sentence per line)
    is cut there, after a line, into documents of about that size: otherwise such a file would be one
    document held whole in memory. A line itself is never cut.
    """
    paragraphs: list[str] = []
    chars = 0
    start = 0
    bad: BadRecord | None = None
    for lineno, raw in lines:
        end = len(raw)
        while end and raw[end - 1] in b"\r\n":
            end -= 1
        try:
            line = str(memoryview(raw)[:end], "utf-8")  # no copy of the bytes first, as `.rstrip()` would make
        except UnicodeDecodeError as e:
            bad = bad or BadRecord(f"{where}:{lineno}: undecodable bytes (not UTF-8: {e.reason})")
            line = "x"  # keep the document open; it is dropped as a whole
        raw = b""  # not held while the document is in use downstream (a single-line file's only line)
        if line and not line.isspace():  # `not line.strip()` without copying a long line
            if not paragraphs:
                start = lineno
            paragraphs.append(line)
            chars += len(line) + 1
            if chars < block_chars:
                continue
        if paragraphs:
            yield start, bad if bad else "\n".join(paragraphs)
            paragraphs, bad, chars = [], None, 0
    if paragraphs:
        yield start, bad if bad else "\n".join(paragraphs)


def _json_line_docs(lines: Iterator[tuple[int, bytes]], where: str,
                    text_field: str) -> Iterator[tuple[int, str | BadRecord]]:
    for lineno, raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as e:
            yield lineno, BadRecord(f"{where}:{lineno}: undecodable bytes (not UTF-8: {e.reason})")
            continue
        except json.JSONDecodeError as e:
            yield lineno, BadRecord(invalid_json(where, e, lineno))
            continue
        yield lineno, record_text(record, f"{where}:{lineno}", text_field)


def _json_array_records(path: Path, stream: BinaryIO, text_field: str) -> Iterator[Record]:
    """A `.json` file holding one array of records (read whole: such files are small by nature)."""
    try:
        records = json.loads(stream.read())
    except UnicodeDecodeError as e:
        raise CrammerError(f"{path}: undecodable bytes (not UTF-8: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise CrammerError(invalid_json(str(path), e)) from None
    for i, record in enumerate(records):
        yield f"{path}[{i}]", record_text(record, f"{path}[{i}]", text_field)


def _parquet_records(path: Path, stream: BinaryIO, text_field: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = stream if path.suffix == ".parquet" else pa.BufferReader(stream.read())
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise CrammerError(f"{path}: not a readable parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise CrammerError(f"{path}: no {text_field!r} column (has: {', '.join(pf.schema_arrow.names)}); "
                           "set --text-field")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                yield f"{path}[row {row}]", text if isinstance(text, str) else BadRecord(
                    f"{path}[row {row}]: {text_field!r} is {type(text).__name__}, not a string"
                )
    except (pa.ArrowInvalid, OSError) as e:
        raise CrammerError(f"{path}: corrupt parquet file ({e})") from None
