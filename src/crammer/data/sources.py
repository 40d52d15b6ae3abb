"""Where documents come from: local files (see `crammer.data.formats`), Hugging Face hub datasets in
streaming mode, and the offline `pydoc` smoke corpus.

A source spec is a string:
- `PATH`, a folder (all supported files below it, sorted, skipping hidden entries and prepared corpora) or
  a glob (sorted matches);
- `hf:NAME[:CONFIG][@SPLIT]` (split defaults to `train`), streamed with `datasets`;
- `pydoc`: the English documentation topics shipped with CPython (a *smoke* corpus, ~465k chars);
each optionally followed by `::max_docs=N` to cap that source.

`parse_source` turns a spec into a `FileSource`, `HubSource` or `PydocSource`; each knows its inputs'
fingerprint (the cache key) and yields its records in a fixed order, so the same specs always give the
same stream. `read_documents` is the one place that applies the caps and the bad-record policy: a bad
record (undecodable bytes, invalid JSON, no text field) is a CrammerError naming file:line, or, with
`skip_bad`, is skipped and counted; a text with lone surrogates (invalid Unicode, from JSON escapes) is
repaired and counted.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import glob
import os
import platform
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Generator, Iterable, Iterator

from crammer.data.formats import (COMPRESSIONS, FORMATS, BadRecord, Record, file_records, is_supported,
                                  lone_surrogate, open_file, record_text, repair_surrogates)
from crammer.data.manifest import is_prepared_corpus
from crammer.errors import CrammerError

PYDOC = "pydoc"
HF_PREFIX = "hf:"


@dataclass
class ReadStats:
    """Counts and progress of one pass over the sources; each pass needs its own, since the global
    `max_docs` cap is checked against `documents_read`."""

    documents_read: int = 0
    documents_bad: int = 0
    documents_empty: int = 0
    documents_repaired: int = 0  # lone surrogates replaced by U+FFFD
    characters_read: int = 0
    bytes_done: int = 0  # on-disk bytes of finished files
    per_source: dict[str, int] = field(default_factory=dict)
    _position: Callable[[], int] | None = None  # on-disk offset inside the file being read

    def bytes_read(self) -> int:
        return self.bytes_done + (self._position() if self._position else 0)

    @contextlib.contextmanager
    def reading(self, path: Path, position: Callable[[], int]) -> Iterator[None]:
        """While `path` is read its `position` is the progress inside it; afterwards its whole size counts."""
        self._position = position
        try:
            yield
        finally:
            self._position = None
            self.bytes_done += path.stat().st_size


class Source(abc.ABC):
    """One parsed `--source` value."""

    spec: str  # as given: the key of `ReadStats.per_source`
    max_docs: int | None  # this source's own cap
    smoke: ClassVar[bool] = False  # a smoke corpus: for tests and demos, not for real pretraining
    tracks_bytes: ClassVar[bool] = False  # reading it advances `ReadStats.bytes_read()` (a progress bar in bytes)

    @abc.abstractmethod
    def fingerprint(self) -> list[dict]:
        """Identity of the inputs, so a cache is not reused after they change (stored in the manifest)."""

    @abc.abstractmethod
    def documents(self, text_field: str, stats: ReadStats) -> Generator[Record, None, None]:
        """(location, text or BadRecord) for every record, in a fixed order; `read_documents` caps them and
        decides what a bad one means."""


@dataclass(frozen=True)
class FileSource(Source):
    """A file, a folder or a glob of local files."""

    spec: str
    path: str
    max_docs: int | None = None
    tracks_bytes: ClassVar[bool] = True

    def fingerprint(self) -> list[dict]:
        """Each file's path, size and mtime."""
        return _file_fingerprints(expand_files(self.path))

    def documents(self, text_field: str, stats: ReadStats) -> Generator[Record, None, None]:
        for path in expand_files(self.path):
            with open_file(path) as (raw, stream), stats.reading(path, raw.tell):
                yield from file_records(path, stream, text_field)


@dataclass(frozen=True)
class HubSource(Source):
    """A Hugging Face hub dataset (or a local folder `datasets` can load), streamed."""

    spec: str
    name: str
    config: str | None = None
    split: str = "train"
    max_docs: int | None = None

    def fingerprint(self) -> list[dict]:
        """Name, config and split only (the hub revision is not knowable offline): such a corpus is cached by
        name, and a newer upload is picked up only by removing the output."""
        entry = {"hf": self.name, "config": self.config, "split": self.split}
        local = Path(self.name)
        if local.is_dir():  # `datasets` loads a local folder's files: key on them like a file source
            return [entry, *_file_fingerprints(sorted(_folder_files(local)))]
        return [{**entry, "cached_by": "name (no hub revision offline; remove the output to refresh)"}]

    def documents(self, text_field: str, stats: ReadStats) -> Generator[Record, None, None]:
        try:
            import datasets
        except ImportError:
            raise CrammerError(f"{self.spec}: hub sources need the `datasets` package (pip install datasets)") from None
        where = f"hf:{self.name}"
        try:
            ds = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
            rows = iter(ds)
            for i, record in enumerate(rows):
                yield f"{where}[{i}]", record_text(record, f"{where}[{i}]", text_field)
        except CrammerError:
            raise
        except Exception as e:  # network, auth, missing dataset/config: all user-fixable
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CrammerError(
                f"{where}: cannot stream from the Hugging Face hub ({type(e).__name__}: {first}); "
                "offline? use a local file or --source pydoc"
            ) from None


@dataclass(frozen=True)
class PydocSource(Source):
    """CPython's bundled documentation topics: the offline smoke corpus."""

    spec: str
    max_docs: int | None = None
    smoke: ClassVar[bool] = True

    def fingerprint(self) -> list[dict]:
        """The Python version and its topics file: a new Python brings new topics."""
        import pydoc_data.topics

        return [{"python": platform.python_version(), **_file_fingerprints([Path(pydoc_data.topics.__file__)])[0]}]

    def documents(self, text_field: str, stats: ReadStats) -> Generator[Record, None, None]:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            yield f"pydoc:{name}", topics[name]


def parse_source(spec: str) -> Source:
    """Parse `TARGET[::max_docs=N]`."""
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
        return PydocSource(spec, max_docs)
    if target.startswith(HF_PREFIX):
        name, _, split = target[len(HF_PREFIX) :].partition("@")
        name, _, config = name.partition(":")
        if not name:
            raise CrammerError(f"source {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
        return HubSource(spec, name, config or None, split or "train", max_docs)
    return FileSource(spec, target, max_docs)


def read_documents(
    sources: list[Source], text_field: str, skip_bad: bool, max_docs: int | None, stats: ReadStats
) -> Iterator[str]:
    """All documents of all sources in order, honouring per-source and global caps."""
    check_distinct(sources)
    for source in sources:
        records = source.documents(text_field, stats)
        taken = 0
        for where, text in records:
            if max_docs is not None and stats.documents_read >= max_docs:
                return
            if source.max_docs is not None and taken >= source.max_docs:
                break
            if isinstance(text, BadRecord):
                if not skip_bad:
                    raise CrammerError(str(text))
                stats.documents_bad += 1
                continue
            if not text or text.isspace():  # blank; `text.strip()` would copy a long document
                stats.documents_empty += 1
                continue
            if lone_surrogate(text) is not None:  # kept, repaired: one bad character is no reason to drop it
                text = repair_surrogates(text)
                stats.documents_repaired += 1
            taken += 1
            stats.documents_read += 1
            stats.characters_read += len(text)
            stats.per_source[source.spec] = stats.per_source.get(source.spec, 0) + 1
            yield text
        records.close()


def check_distinct(sources: list[Source]) -> None:
    """Refuse a file that two sources name (a folder and a file in it, overlapping globs): its documents would
    be read twice, and a document held out for validation could also be trained on."""
    named: dict[Path, str] = {}
    for source in sources:
        if not isinstance(source, FileSource):
            continue
        for path in expand_files(source.path):
            first = named.setdefault(path.resolve(), source.spec)
            if first != source.spec:
                raise CrammerError(f"{path}: named by two sources ({first} and {source.spec}): its documents would "
                                   "be read twice (and a held-out one trained on); give each file once")


def expand_files(target: str) -> list[Path]:
    """The files a local source names, in a stable order; a clear error when there are none."""
    path = Path(target).expanduser()
    if path.is_file():
        if not is_supported(path):
            raise CrammerError(
                f"{path}: unsupported file type (use {', '.join(FORMATS)}, optionally {', '.join(COMPRESSIONS)})"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in _folder_files(path) if is_supported(p))
        if not files:
            raise CrammerError(f"{path}: folder holds no supported files ({', '.join(FORMATS)}; hidden entries "
                               "and prepared corpora are skipped)")
        return files
    if glob.has_magic(target):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(target), recursive=True))
        files = [p for p in files if p.is_file() and is_supported(p) and not is_prepared_corpus(p.parent)]
        if not files:
            raise CrammerError(f"{target}: glob matches no supported files")
        return files
    raise CrammerError(f"{path}: {_why_not_a_file(path)}")


def _why_not_a_file(path: Path) -> str:
    """What `path` is, when it is neither a regular file nor a folder (pathlib's tests say only False)."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (a link that leads back to itself), not a file"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "no such file or directory"
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "not a regular file or folder"


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
