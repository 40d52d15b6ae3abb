"""`manifest.json`, the on-disk contract between `cram data prepare` and everything that reads a corpus.

A prepared corpus is a folder with
- `manifest.json`: format, seq_len, dtype, vocab_size, special token ids, shard list, counts, the
  resolved config and its hash, the input files' fingerprints (the cache key, with the hash);
- `shards/shard-NNNNN.npy`: 2-D arrays (num_sequences, seq_len) of token ids;
- `validation/shard-NNNNN.npy`: the same for the validation split (whole documents held out of `shards/`;
  corpora from before the split have none);
- the tokenizer (`tokenizer.json` + what `AutoTokenizer.from_pretrained(DIR)` needs).

`Manifest` is the one schema of that file: `prepare` writes it, `PackedCorpus` and the cache check read
it. Keys added after the first corpora were written have defaults, so those corpora still load.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from crammer.errors import CrammerError
from crammer.io import atomic_write_json, read_json

FORMAT_FAMILY = "crammer-packed-"  # the tag of every version of the format
FORMAT = FORMAT_FAMILY + "v1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
VALIDATION_DIR = "validation"


def is_prepared_corpus(path: Path) -> bool:
    """Whether `path` holds a corpus written by `cram data prepare` (any format version): such a folder may be
    replaced by a new one, and is never read as input."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(FORMAT_FAMILY)


@dataclass(frozen=True)
class Shard:
    file: str  # relative to the corpus folder, e.g. "shards/shard-00000.npy"
    num_sequences: int


@dataclass(kw_only=True)
class Counts:
    """What happened to the documents on the way into blocks."""

    documents_read: int
    documents_bad: int
    documents_empty: int
    documents_repaired: int = 0  # lone surrogates replaced by U+FFFD (not counted by earlier versions)
    documents_filtered: int
    documents_deduplicated: int
    documents_kept: int
    characters_read: int
    tokens: int
    tokens_unk: int = 0  # not counted by the earliest versions
    tokens_dropped_remainder: int
    sequences: int
    documents_per_source: dict[str, int]


@dataclass(kw_only=True)
class TextChoices:
    """What was chosen for this corpus's text, and why (`crammer.data.language`)."""

    normalization: str  # uncased | cased | given (a given tokenizer's own)
    normalization_reason: str
    filter: str  # ratio (the paper's rule) | corpus (against the corpus's own rates) | none
    filter_reason: str
    filter_spaced: float | None = None  # tokens allowed per character (of scripts written with spaces)
    filter_unspaced: float | None = None  # ... per character of scripts without (None: counted as spaced)
    scripts: dict[str, Any] | None = None  # the sample's scripts, when a choice needed them
    token_rates: dict[str, Any] | None = None  # the corpus's median tokens per character (corpus rule)


@dataclass(kw_only=True)
class Manifest:
    """One field per key of `manifest.json`; a field with a default may be missing from an older corpus."""

    format: str
    seq_len: int
    dtype: str
    vocab_size: int
    vocab_size_requested: int | None = None  # a small corpus may not fill it
    special_tokens: dict[str, int]
    shards: list[Shard]
    num_sequences: int
    num_tokens: int
    unk_fraction: float | None = None
    config: dict[str, Any]  # the resolved CorpusConfig
    config_hash: str
    tokenizer_fingerprint: str | None = None  # of a given tokenizer; None for one trained on the corpus
    counts: Counts
    sources: list[str]
    source_files: list[list[dict[str, Any]]]  # one fingerprint per source
    smoke_corpus: bool
    note: str
    normalizer: dict[str, Any] | None
    tokenizer_seconds: float = 0.0
    seconds: float
    validation_shards: list[Shard] = dataclasses.field(default_factory=list)  # never read by pretraining
    validation_sequences: int = 0
    validation_documents: int = 0
    validation_characters: int | None = None  # of the held-out documents, as read (for bits per character)
    validation_text_tokens: int | None = None  # their tokens, [SEP]s not counted
    text: TextChoices | None = None  # normalization and filter: what was chosen and why
    warnings: list[str] = dataclasses.field(default_factory=list)  # said when prepared; inspect and the report repeat them

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / MANIFEST, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of the corpus in `folder`; a CrammerError naming the file when it is missing or malformed."""
        path = folder / MANIFEST
        if not path.is_file():
            raise CrammerError(f"{folder}: not a prepared corpus (no {MANIFEST}); run `cram data prepare` first")
        data = read_json(path)
        if not isinstance(data, dict):
            raise CrammerError(f"{path}: not a manifest (a JSON object expected, got {type(data).__name__})")
        if data.get("format") != FORMAT:
            raise CrammerError(f"{path}: unknown format {data.get('format')!r}")
        fields = _known_fields(cls, data, path)
        for key in ("shards", "validation_shards"):
            if key in fields:
                fields[key] = [_shard(entry, path) for entry in _typed(list, fields[key], key, path)]
        if fields.get("text") is not None:
            fields["text"] = TextChoices(**_known_fields(TextChoices, _typed(dict, fields["text"], "text", path), path,
                                                         "text."))
        fields["counts"] = Counts(**_known_fields(Counts, _typed(dict, fields["counts"], "counts", path), path,
                                                  "counts."))
        return cls(**fields)


def _known_fields(cls: type, data: dict[str, Any], path: Path, prefix: str = "") -> dict[str, Any]:
    """`data`'s keys that are fields of `cls` (others are ignored); a missing required one is an error."""
    known = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            known[f.name] = data[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CrammerError(f"{path}: no {prefix + f.name!r} (a truncated or hand-edited manifest?)")
    return known


def _typed(kind: type, value: Any, key: str, path: Path) -> Any:
    if not isinstance(value, kind):
        raise CrammerError(f"{path}: {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _shard(entry: Any, path: Path) -> Shard:
    """A shard entry; its file must lie inside the corpus folder, whatever the manifest says."""
    entry = _typed(dict, entry, "shards[]", path)
    file = _typed(str, entry.get("file"), "shards[].file", path)
    num_sequences = entry.get("num_sequences")
    if not isinstance(num_sequences, int) or isinstance(num_sequences, bool):
        raise CrammerError(f"{path}: shard {file!r}: num_sequences is {num_sequences!r}, expected an integer")
    parts = PurePosixPath(posixpath.normpath(file)).parts
    if PurePosixPath(file).is_absolute() or not parts or parts[0] == "..":
        # judged on the text, not on the resolved path, so that `shards` may be a link to another disk
        raise CrammerError(f"{path}: shard {file!r} is outside the corpus folder (must be a relative path in it)")
    return Shard(file, num_sequences)
