"""A user's own labelled data for `cram finetune`: CSV, TSV, JSON lines, parquet (each optionally `.gz`, `.xz`,
`.zst`, `.bz2`), CoNLL-style files, or `hf:NAME[:CONFIG][@SPLIT]` datasets; single texts or text pairs.

Every row is checked as it is read and a bad one is a one-line error naming the file, the row (`file:line`,
or `file[row N]` for parquet and hub datasets) and the column. The label set comes from the training data
(sorted: numerically when every label is an integer); the evaluation data may not bring new labels.
CSV is read with the usual quoting; TSV, as GLUE's files are, without any (a `"` is a character).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from crammer.errors import CrammerError
from crammer.eval.spec import TASK_KINDS, TaskKind
from crammer.eval.tasks import Split

TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CONLL_FORMATS = (".conll", ".conllu", ".iob", ".bio", ".txt")  # word ... tag per line; .txt for tagging only
COMPRESSIONS = (".gz", ".xz", ".zst", ".bz2")
DEFAULT_SPLITS = {"train": "train", "eval": "validation"}


@dataclass(frozen=True)
class DataSpec:
    """Which columns hold what. Token classification reads one column of words and one of tags (CoNLL
    files have no header: the first field of a line is the word, the last its tag)."""

    kind: TaskKind = "classification"
    text_columns: tuple[str, ...] = ()  # () = text (tokens for token classification)
    label_column: str | None = None  # None = label (tags for token classification)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise CrammerError(f"--task {self.kind!r}: choose from {', '.join(TASK_KINDS)}")
        token = self.kind == "token-classification"
        if not self.text_columns:
            object.__setattr__(self, "text_columns", ("tokens",) if token else ("text",))
        if self.label_column is None:
            object.__setattr__(self, "label_column", "tags" if token else "label")
        if len(self.text_columns) > (1 if token else 2):
            raise CrammerError(f"--text-column given {len(self.text_columns)} times: "
                               + ("token classification reads one column of words" if token
                                  else "one text column, or two for text pairs"))


class BadRow(ValueError):
    """What is wrong with one field; the reader adds the file, row and column."""


Record = tuple[str, dict[str, Any]]  # (location, column -> value)


def read_split(source: str, data: DataSpec, role: str, labels: tuple[str, ...] | None = None,
               skip_malformed_rows: bool = False) -> tuple[Split, tuple[str, ...], int]:
    """(split, label set, skipped rows) of one source. `role` is `train` (the label set is read from it) or
    `eval` (its labels must be in `labels`)."""
    columns = (*data.text_columns, data.label_column)
    texts: list[list[Any]] = [[] for _ in data.text_columns]
    raw: list[Any] = []
    wheres: list[str] = []
    skipped = 0
    for where, row in records(source, columns, data.kind, role):
        try:
            if "__bad__" in row:
                raise BadRow(row["__bad__"])
            values = [_text(row, c, data.kind) for c in data.text_columns]
            label = _label(row, data)
            if data.kind == "token-classification" and len(label) != len(values[0]):
                raise BadRow(f"column {data.label_column!r}: {len(label)} tags for {len(values[0])} words")
        except BadRow as e:
            if skip_malformed_rows:
                skipped += 1
                continue
            raise CrammerError(f"{where}: {e}; skip such rows with skip_malformed_rows=true") from None
        for column, value in zip(texts, values):
            column.append(value)
        raw.append(label)
        wheres.append(where)
    if not raw:
        raise CrammerError(f"{source}: no examples" + (f" ({skipped} malformed rows skipped)" if skipped else ""))
    if data.kind == "regression":
        return Split(texts[0], texts[1] if len(texts) > 1 else None, raw), (), skipped
    if labels is None:
        labels = label_set(raw, data.kind)
    index = {name: i for i, name in enumerate(labels)}
    keep, encoded = [], []
    for i, (where, value) in enumerate(zip(wheres, raw)):
        items = [value] if data.kind == "classification" else value
        unknown = [v for v in items if v not in index]
        if unknown:
            if skip_malformed_rows:
                skipped += 1
                continue
            what = "tag" if data.kind == "token-classification" else "label"
            raise CrammerError(f"{where}: column {data.label_column!r}: {what} {unknown[0]!r} is not in the training "
                               f"data (which has {_names(labels)}); skip such rows with skip_malformed_rows=true")
        keep.append(i)
        encoded.append(index[value] if data.kind == "classification" else [index[v] for v in value])
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    split = Split(pick(texts[0]), pick(texts[1]) if len(texts) > 1 else None, encoded)
    if not encoded:
        raise CrammerError(f"{source}: no examples with a label of the training data ({skipped} skipped)")
    return split, labels, skipped


def label_set(values: list[Any], kind: str) -> tuple[str, ...]:
    """The sorted label names of the training data: numerically when all are integers."""
    names = set(values) if kind == "classification" else {v for row in values for v in row}
    integral = all(_is_int(n) for n in names)
    return tuple(sorted(names, key=(lambda n: (int(n), n)) if integral else None))


def mixed_labels(labels: tuple[str, ...]) -> str | None:
    """A warning when the label set mixes integers and names (`0`, `1`, `pos`): each is a class of its own,
    which is rarely what was meant (a stray `pos` among 0/1 labels makes three classes)."""
    numbers = [n for n in labels if _is_int(n)]
    names = [n for n in labels if not _is_int(n)]
    if not numbers or not names:
        return None
    return (f"the labels mix integers ({_names(tuple(numbers), 5)}) and names ({_names(tuple(names), 5)}): "
            f"{len(labels)} separate classes; fix the data if that is not meant")


def _names(labels: tuple[str, ...], limit: int = 10) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _text(row: dict, column: str, kind: str) -> Any:
    value = row.get(column)
    if kind == "token-classification":
        words = _as_list(value, column, None)
        if not words:
            raise BadRow(f"column {column!r}: no words")
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise BadRow(f"column {column!r}: every word must be a non-empty string")
        for word in words:
            _valid_unicode(word, column)
        return words
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"column {column!r}: empty text")
    if not isinstance(value, str):
        raise BadRow(f"column {column!r}: text is {type(value).__name__}, not a string")
    _valid_unicode(value, column)
    return value


def _valid_unicode(text: str, column: str) -> None:
    """A lone surrogate (JSON's `"\ud800"`) is text no tokenizer takes: a bad row, named, not a TypeError later."""
    from crammer.data.formats import lone_surrogate

    at = lone_surrogate(text)
    if at is not None:
        raise BadRow(f"column {column!r}: a lone surrogate {text[at]!a} at character {at + 1} (not valid Unicode)")


def _label(row: dict, data: DataSpec) -> Any:
    column = data.label_column
    value = row.get(column)
    if data.kind == "regression":
        try:
            target = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadRow(f"column {column!r}: {value!r} is not a number") from None
        if not math.isfinite(target) or isinstance(value, bool):
            raise BadRow(f"column {column!r}: {value!r} is not a finite number")
        return target
    if data.kind == "classification":
        return _label_name(value, column)
    items = _as_list(value, column, None if data.kind == "token-classification" else ",")
    return [_label_name(v, column) for v in items]


def _label_name(value: Any, column: str) -> str:
    """A class name from a string or an integer (1, 1.0 and "1" are one label)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise BadRow(f"column {column!r}: {value!r} is not a label (a string or an integer)")
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRow(f"column {column!r}: {value!r} is not a class (use --task regression for numbers)")
        value = int(value)
    name = str(value).strip()
    if not name:
        raise BadRow(f"column {column!r}: empty label")
    return name


def _as_list(value: Any, column: str, sep: str | None) -> list:
    """A list cell: a real list (JSON, parquet, hub), or in CSV/TSV a JSON array or items separated by `sep`
    (commas for multi-label classes; whitespace, None, for words and tags)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from pyarrow
        return list(value.tolist())
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as e:
                raise BadRow(f"column {column!r}: not a JSON list ({e.msg})") from None
            if isinstance(parsed, list):
                return parsed
        return [item.strip() for item in text.split(sep) if item.strip()]
    raise BadRow(f"column {column!r}: {'missing' if value is None else repr(value)}: expected a list")


# ---- sources -------------------------------------------------------------------------------------------------

def records(source: str, columns: tuple[str, ...], kind: str, role: str) -> Iterator[Record]:
    """The rows of one source as (location, {column: value}), in order."""
    if source.startswith("hf:"):
        yield from _hub_records(source, columns, role)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        raise CrammerError(f"--{role} {source}: is a folder; give one data file")
    if not path.is_file():
        raise CrammerError(f"--{role} {source}: no such file")
    fmt = data_format(path)
    if fmt in CONLL_FORMATS:
        if kind != "token-classification":
            raise CrammerError(f"--{role} {source}: a CoNLL-style file ({fmt}) holds tagged words: use "
                               f"--task token-classification, or a {'/'.join(TABLE_FORMATS)} file")
        yield from _conll_records(path, columns)
    elif fmt == ".parquet":
        yield from _parquet_records(path, columns)
    elif fmt in (".jsonl", ".json"):
        yield from _json_records(path, columns)
    elif fmt in (".csv", ".tsv"):
        yield from _table_records(path, columns, "\t" if fmt == ".tsv" else ",")
    else:
        raise CrammerError(f"--{role} {source}: unknown format; use {', '.join(TABLE_FORMATS + CONLL_FORMATS)} "
                           f"(optionally {', '.join(COMPRESSIONS)}) or hf:NAME[@SPLIT]")


def data_format(path: Path) -> str:
    """The format suffix under an optional compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def fingerprint(source: str, role: str) -> str:
    """What trials are keyed on for the data: a local file's bytes; a hub dataset's name, split and the
    `datasets` fingerprint of its cached files."""
    if source.startswith("hf:"):
        name, config, split = parse_hub(source, role)
        return f"hf:{name}:{config}@{split}#{_load_hub(source, role, name, config, split)._fingerprint}"
    digest = hashlib.sha256()
    with open(Path(source).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:24]}"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's decompressed text lines (UTF-8, an optional BOM, line ends kept for the csv module)."""
    from crammer.data.formats import open_file

    with open_file(path) as (_, stream):
        try:
            for lineno, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""), 1):
                yield lineno, line
        except UnicodeDecodeError as e:
            raise CrammerError(f"{path}: undecodable bytes (not UTF-8: {e.reason})") from None
        except (EOFError, OSError) as e:
            raise CrammerError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from None


def _missing_columns(where: str, have: list[str], columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in have]
    if missing:
        raise CrammerError(f"{where}: no column {missing[0]!r} (has: {', '.join(have)}); "
                           "name yours with --text-column / --label-column")


# A cell may hold a whole document (it is truncated to max_length later): no limit of the csv module's own
# (128 KiB by default, which made valid files "malformed").
FIELD_SIZE_LIMIT = 2**31 - 1


def _table_records(path: Path, columns: tuple[str, ...], delimiter: str) -> Iterator[Record]:
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader((line for _, line in _lines(path)), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise CrammerError(f"{path}: empty file (expected a header row naming the columns)")
        _missing_columns(f"{path}:1", header, columns)
        wanted = [header.index(c) for c in columns]
        last = reader.line_num
        for row in reader:
            where, last = f"{path}:{last + 1}", reader.line_num
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                yield where, {"__bad__": f"{len(row)} fields where the header has {len(header)}"}
                continue
            yield where, {c: row[i] for c, i in zip(columns, wanted)}
    except csv.Error as e:
        raise CrammerError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") \
            from None


def _json_records(path: Path, columns: tuple[str, ...]) -> Iterator[Record]:
    numbered = _lines(path)
    first = next(numbered, None)
    if first is not None and first[1].lstrip().startswith("["):  # one JSON array of records
        text = first[1] + "".join(line for _, line in numbered)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise CrammerError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        numbered_rows: Iterator = ((f"{path}[{i}]", r) for i, r in enumerate(rows))
    else:
        def parsed():
            for lineno, line in ([first] if first else []) + list(numbered):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", {"__bad__": f"invalid JSON ({e.msg})"}
        numbered_rows = parsed()
    for where, row in numbered_rows:
        if not isinstance(row, dict):
            yield where, {"__bad__": f"a {type(row).__name__}, not an object of columns"}
        elif "__bad__" in row:
            yield where, row
        else:
            absent = [c for c in columns if c not in row]
            yield where, ({c: row[c] for c in columns} if not absent else
                          {"__bad__": f"no column {absent[0]!r} (has: {', '.join(row)})"})


def _parquet_records(path: Path, columns: tuple[str, ...]) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crammer.data.formats import open_file

    with open_file(path) as (_, stream):
        source = path if data_format(path) == path.suffix.lower() else pa.BufferReader(stream.read())
        try:
            table = pq.ParquetFile(source)
            _missing_columns(str(path), table.schema_arrow.names, columns)
            row = 0
            for batch in table.iter_batches(batch_size=4096, columns=list(dict.fromkeys(columns))):
                values = {c: batch.column(c).to_pylist() for c in dict.fromkeys(columns)}
                for i in range(batch.num_rows):
                    row += 1
                    yield f"{path}[row {row}]", {c: values[c][i] for c in columns}
        except (pa.ArrowInvalid, OSError) as e:
            raise CrammerError(f"{path}: not a readable parquet file ({e})") from None


def _conll_records(path: Path, columns: tuple[str, ...]) -> Iterator[Record]:
    """One sentence per blank-line separated block, one `word ... tag` line per word (whitespace-separated;
    the first field is the word, the last the tag); `-DOCSTART-` lines are skipped."""
    words_column, tags_column = columns
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in _lines(path):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if words:
                yield f"{path}:{start}", {words_column: words, tags_column: tags}
            words, tags = [], []
            continue
        if len(fields) < 2:
            yield f"{path}:{lineno}", {"__bad__": f"expected 'word ... tag', got {line.strip()!r}"}
            continue
        if not words:
            start = lineno
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        yield f"{path}:{start}", {words_column: words, tags_column: tags}


def parse_hub(source: str, role: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config, split); the split defaults to train / validation."""
    spec = source[3:]
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    if not name:
        raise CrammerError(f"--{role} {source}: expected hf:NAME[:CONFIG][@SPLIT]")
    return name, config or None, split or DEFAULT_SPLITS.get(role, "train")


@functools.lru_cache(maxsize=4)
def _hub_dataset(name: str, config: str | None, split: str):
    import datasets

    return datasets.load_dataset(name, config, split=split)


def _load_hub(source: str, role: str, name: str, config: str | None, split: str):
    """The dataset (from the cache when it is there; downloaded once otherwise), or a one-line error."""
    try:
        return _hub_dataset(name, config, split)
    except Exception as e:  # offline, unknown dataset or split, network: one line that says which
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"--{role} {source}: cannot load it with `datasets` ({reason[:200]}); offline, a hub "
                           "dataset must be in the cache already, or give a local file") from None


def _hub_records(source: str, columns: tuple[str, ...], role: str) -> Iterator[Record]:
    """A hub (or local `datasets`) dataset; class-label columns give their names, not their indices."""
    name, config, split = parse_hub(source, role)
    ds = _load_hub(source, role, name, config, split)
    _missing_columns(source, list(ds.column_names), columns)
    names = {c: _class_names(ds.features[c]) for c in dict.fromkeys(columns)}
    for i, row in enumerate(ds.select_columns(list(dict.fromkeys(columns)))):
        out = {}
        for c in columns:
            value, labels = row[c], names[c]
            if labels is not None:
                value = [labels[v] for v in value] if isinstance(value, list) else labels[value]
            out[c] = value
        yield f"{source}[row {i + 1}]", out


def _class_names(feature) -> list[str] | None:
    """The names of a ClassLabel feature (or of a list of them), else None."""
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
    target = inner if inner is not None else feature
    return list(target.names) if type(target).__name__ == "ClassLabel" else None
