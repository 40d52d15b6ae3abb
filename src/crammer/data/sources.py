"""Where documents come from: local files (txt/jsonl/json/parquet, optionally compressed), Hugging
Face hub datasets in streaming mode, and the offline `pydoc` smoke corpus.

A source spec is a string:
- `PATH`, a folder (all supported files below it, sorted, skipping hidden entries and prepared corpora) or
  a glob (sorted matches);
- `hf:NAME[:CONFIG][@SPLIT]` (split defaults to `train`), streamed with `datasets`;
- `pydoc`: the English documentation topics shipped with CPython (a *smoke* corpus, ~465k chars);
each optionally followed by `::max_docs=N` to cap that source.

Readers yield documents as plain strings in a fixed order, so the same specs always give the same
stream. A bad record (undecodable bytes, invalid JSON, no text field) is a CrammerError naming
file:line, or, with `skip_bad`, is skipped and counted.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from crammer.data.packed import is_prepared_corpus
from crammer.errors import CrammerError

PYDOC = "pydoc"
HF_PREFIX = "hf:"
COMPRESSIONS = (".gz", ".xz", ".zst", ".bz2")
FORMATS = (".txt", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class SourceSpec:
    """One parsed `--source` value."""

    spec: str
    kind: str  # "file", "hf" or "pydoc"
    target: str  # the path/glob, the hub name, or "pydoc"
    max_docs: int | None = None
    hf_config: str | None = None
    hf_split: str = "train"


def parse_source(spec: str) -> SourceSpec:
    """Parse `TARGET[::max_docs=N]` into a SourceSpec."""
    target, _, options = spec.partition("::")
    max_docs = None
    if options:
        for option in options.split(","):
            key, eq, value = option.partition("=")
            if key.strip() != "max_docs" or not eq:
                raise CrammerError(f"source {spec!r}: unknown option {option!r} (supported: max_docs=N)")
            try:
                max_docs = int(value)
            except ValueError:
                raise CrammerError(f"source {spec!r}: max_docs must be an integer, got {value!r}") from None
            if max_docs <= 0:
                raise CrammerError(f"source {spec!r}: max_docs must be positive")
    target = target.strip()
    if not target:
        raise CrammerError(f"source {spec!r}: empty path")
    if target == PYDOC:
        return SourceSpec(spec, "pydoc", target, max_docs)
    if target.startswith(HF_PREFIX):
        name, _, split = target[len(HF_PREFIX) :].partition("@")
        name, _, config = name.partition(":")
        if not name:
            raise CrammerError(f"source {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
        return SourceSpec(spec, "hf", name, max_docs, config or None, split or "train")
    return SourceSpec(spec, "file", target, max_docs)


def _is_supported(path: Path) -> bool:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS


def expand_files(target: str) -> list[Path]:
    """The files a local source names, in a stable order; a clear error when there are none."""
    path = Path(target).expanduser()
    if path.is_file():
        if not _is_supported(path):
            raise CrammerError(
                f"{path}: unsupported file type (use {', '.join(FORMATS)}, optionally {', '.join(COMPRESSIONS)})"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in _folder_files(path) if _is_supported(p))
        if not files:
            raise CrammerError(f"{path}: folder holds no supported files ({', '.join(FORMATS)}; hidden entries "
                               "and prepared corpora are skipped)")
        return files
    if glob.has_magic(target):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(target), recursive=True))
        files = [p for p in files if p.is_file() and _is_supported(p) and not is_prepared_corpus(p.parent)]
        if not files:
            raise CrammerError(f"{target}: glob matches no supported files")
        return files
    raise CrammerError(f"{path}: no such file or directory")


def _folder_files(root: Path) -> Iterator[Path]:
    """Files below `root`, leaving out hidden entries (`.x`: staging folders, VCS data) and prepared corpora,
    so that an output written inside a source folder is never read back as input."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if is_prepared_corpus(here):
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (here / f for f in files if not f.startswith(".") and (here / f).is_file())


def _file_fingerprints(files: Iterable[Path]) -> list[dict]:
    out = []
    for p in files:
        st = p.stat()
        out.append({"file": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def fingerprint(spec: SourceSpec) -> list[dict]:
    """Identity of a source's inputs, so a cache is not reused after they change: each local file's path,
    size and mtime; for `pydoc`, the Python version and its topics file. A hub dataset is identified by
    name, config and split only (its revision is not knowable offline): such a corpus is cached by name,
    and a newer upload is picked up only by removing the output."""
    if spec.kind == "file":
        return _file_fingerprints(expand_files(spec.target))
    if spec.kind == "pydoc":
        import pydoc_data.topics

        return [{"python": platform.python_version(), **_file_fingerprints([Path(pydoc_data.topics.__file__)])[0]}]
    entry = {"hf": spec.target, "config": spec.hf_config, "split": spec.hf_split}
    local = Path(spec.target)
    if local.is_dir():  # `datasets` loads a local folder's files: key on them like a file source
        return [entry, *_file_fingerprints(sorted(_folder_files(local)))]
    return [{**entry, "cached_by": "name (no hub revision offline; remove the output to refresh)"}]


@dataclass
class ReadStats:
    """Counts and progress of one pass over the sources; each pass needs its own, since the global
    `max_docs` cap is checked against `documents_read`."""

    documents_read: int = 0
    documents_bad: int = 0
    documents_empty: int = 0
    characters_read: int = 0
    bytes_done: int = 0  # on-disk bytes of finished files
    per_source: dict[str, int] = field(default_factory=dict)
    _position: Callable[[], int] | None = None  # on-disk offset inside the file being read

    def bytes_read(self) -> int:
        return self.bytes_done + (self._position() if self._position else 0)


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


class _BadRecord(Exception):
    """One unusable record; the reader raises it as a CrammerError or skips it."""


def _text_docs(lines: Iterator[tuple[int, bytes]], where: str) -> Iterator[tuple[int, str]]:
    """Blank-line separated documents; a document's lines are joined with '\\n'."""
    paragraphs: list[str] = []
    start = 0
    bad: _BadRecord | None = None
    for lineno, raw in lines:
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            bad = bad or _BadRecord(f"{where}:{lineno}: undecodable bytes (not UTF-8: {e.reason})")
            line = "x"  # keep the document open; it is dropped as a whole
        if line.strip():
            if not paragraphs:
                start = lineno
            paragraphs.append(line)
            continue
        if paragraphs:
            yield start, bad if bad else "\n".join(paragraphs)
            paragraphs, bad = [], None
    if paragraphs:
        yield start, bad if bad else "\n".join(paragraphs)


def _json_line_docs(lines: Iterator[tuple[int, bytes]], where: str, text_field: str) -> Iterator[tuple[int, str]]:
    for lineno, raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as e:
            yield lineno, _BadRecord(f"{where}:{lineno}: undecodable bytes (not UTF-8: {e.reason})")
            continue
        except json.JSONDecodeError as e:
            yield lineno, _BadRecord(f"{where}:{lineno}: invalid JSON ({e.msg})")
            continue
        yield lineno, _record_text(record, f"{where}:{lineno}", text_field)


def _record_text(record, where: str, text_field: str):
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        return _BadRecord(f"{where}: no {text_field!r} field (has: {keys}); set --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        return _BadRecord(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


def _numbered_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    return enumerate(io.BufferedReader(stream, 1 << 20) if not isinstance(stream, io.BufferedReader) else stream, 1)


def _file_docs(path: Path, text_field: str, stats: ReadStats) -> Iterator[tuple[str, object]]:
    """(location, text or _BadRecord) for each record of one file."""
    fmt = Path(path.stem).suffix if path.suffix in COMPRESSIONS else path.suffix
    try:
        raw, stream = _open_binary(path)
    except OSError as e:  # unreadable (permissions), or gone since the listing
        raise CrammerError(f"{path}: cannot open ({e.strerror or e})") from None
    stats._position = raw.tell
    try:
        if fmt == ".parquet":
            yield from _parquet_docs(path, stream, text_field)
        elif fmt == ".txt":
            for lineno, doc in _text_docs(_numbered_lines(stream), str(path)):
                yield f"{path}:{lineno}", doc
        elif fmt == ".json":
            buffered = io.BufferedReader(stream, 1 << 20) if stream is not raw else stream
            head = buffered.peek(64).lstrip()
            if head.startswith(b"["):
                yield from _json_array_docs(path, buffered, text_field)
            else:
                for lineno, doc in _json_line_docs(enumerate(buffered, 1), str(path), text_field):
                    yield f"{path}:{lineno}", doc
        else:
            for lineno, doc in _json_line_docs(_numbered_lines(stream), str(path), text_field):
                yield f"{path}:{lineno}", doc
    except _corrupt_errors() as e:
        raise CrammerError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from None
    finally:
        stats._position = None
        stats.bytes_done += path.stat().st_size
        stream.close()
        raw.close()


def _json_array_docs(path: Path, stream: BinaryIO, text_field: str) -> Iterator[tuple[str, object]]:
    """A `.json` file holding one array of records (read whole: such files are small by nature)."""
    try:
        records = json.loads(stream.read())
    except UnicodeDecodeError as e:
        raise CrammerError(f"{path}: undecodable bytes (not UTF-8: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise CrammerError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    for i, record in enumerate(records):
        yield f"{path}[{i}]", _record_text(record, f"{path}[{i}]", text_field)


def _parquet_docs(path: Path, stream: BinaryIO, text_field: str) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = stream if path.suffix == ".parquet" else pa.BufferReader(stream.read())
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise CrammerError(f"{path}: not a readable parquet file ({e})") from None
    if text_field not in pf.schema_arrow.names:
        raise CrammerError(f"{path}: no {text_field!r} column (has: {', '.join(pf.schema_arrow.names)}); set --text-field")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                yield f"{path}[row {row}]", text if isinstance(text, str) else _BadRecord(
                    f"{path}[row {row}]: {text_field!r} is {type(text).__name__}, not a string"
                )
    except (pa.ArrowInvalid, OSError) as e:
        raise CrammerError(f"{path}: corrupt parquet file ({e})") from None


def _hf_docs(spec: SourceSpec, text_field: str) -> Iterator[tuple[str, object]]:
    try:
        import datasets
    except ImportError:
        raise CrammerError(f"{spec.spec}: hub sources need the `datasets` package (pip install datasets)") from None
    where = f"hf:{spec.target}"
    try:
        ds = datasets.load_dataset(spec.target, spec.hf_config, split=spec.hf_split, streaming=True)
        rows = iter(ds)
        for i, record in enumerate(rows):
            yield f"{where}[{i}]", _record_text(record, f"{where}[{i}]", text_field)
    except CrammerError:
        raise
    except Exception as e:  # network, auth, missing dataset/config: all user-fixable
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CrammerError(
            f"{where}: cannot stream from the Hugging Face hub ({type(e).__name__}: {first}); "
            "offline? use a local file or --source pydoc"
        ) from None


def _pydoc_docs() -> Iterator[tuple[str, object]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc:{name}", topics[name]


def read_documents(
    specs: list[SourceSpec], text_field: str, skip_bad: bool, max_docs: int | None, stats: ReadStats
) -> Iterator[str]:
    """All documents of all sources in order, honouring per-source and global caps."""
    for spec in specs:
        if spec.kind == "file":
            records = (rec for path in expand_files(spec.target) for rec in _file_docs(path, text_field, stats))
        elif spec.kind == "hf":
            records = _hf_docs(spec, text_field)
        else:
            records = _pydoc_docs()
        taken = 0
        for where, text in records:
            if max_docs is not None and stats.documents_read >= max_docs:
                return
            if spec.max_docs is not None and taken >= spec.max_docs:
                break
            if isinstance(text, _BadRecord):
                if not skip_bad:
                    raise CrammerError(str(text))
                stats.documents_bad += 1
                continue
            if not text.strip():
                stats.documents_empty += 1
                continue
            taken += 1
            stats.documents_read += 1
            stats.characters_read += len(text)
            stats.per_source[spec.spec] = taken
            yield text
        records.close()
