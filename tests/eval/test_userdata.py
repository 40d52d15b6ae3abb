"""Reading a user's own data: the real GLUE files rewritten as CSV / JSONL / parquet with other column names and
string labels, a CoNLL-style file, compressed variants; every bad row a one-line error naming file, row, column."""

from __future__ import annotations

import csv
import gzip
import json
import lzma
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crammer.errors import CrammerError
from crammer.eval.tasks import load_task
from crammer.eval.userdata import DataSpec, fingerprint, label_set, read_split

SENTIMENT = {0: "neg", 1: "pos"}


def write_csv(path, header, rows, delimiter=","):
    """CSV as Python's csv module (or a spreadsheet) writes it; TSV as GLUE's files are, without quoting."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        if delimiter == "\t":
            f.writelines("\t".join(row) + "\n" for row in [header, *rows])
        else:
            csv.writer(f).writerows([header, *rows])
    return path


def write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


@pytest.fixture(scope="module")
def sst2(glue_dir):
    data = load_task("sst2", glue_dir)
    return data.train.subset(range(300)), data.evals[""].subset(range(200))


def test_sst2_as_csv_jsonl_and_parquet_read_the_same(sst2, tmp_path):
    train, _ = sst2
    rows = [[t, SENTIMENT[y]] for t, y in zip(train.text_a, train.labels)]
    records = [{"review": t, "sentiment": y, "id": i} for i, (t, y) in enumerate(rows)]
    sources = [
        write_csv(tmp_path / "train.csv", ["review", "sentiment"], rows),
        write_jsonl(tmp_path / "train.jsonl", records),
        write_jsonl(tmp_path / "train.jsonl.xz", records, opener=lzma.open),
    ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
    sources.append(tmp_path / "train.parquet")
    with gzip.open(tmp_path / "train.csv.gz", "wb") as f:
        f.write((tmp_path / "train.csv").read_bytes())
    sources.append(tmp_path / "train.csv.gz")
    spec = DataSpec("classification", ("review",), "sentiment")
    for source in sources:
        split, labels, skipped = read_split(str(source), spec, "train")
        assert labels == ("neg", "pos") and skipped == 0, source
        assert split.text_a == train.text_a and split.labels == train.labels, source  # neg = 0, pos = 1 as in GLUE
    assert any('"' in t or "," in t for t in train.text_a)  # the CSV quoting was exercised


def test_integer_labels_sort_numerically_and_pairs_come_in_order(glue_dir, tmp_path):
    mrpc = load_task("mrpc", glue_dir).train.subset(range(50))
    labels = [str(10 * y + 2) for y in mrpc.labels]  # "2" and "12": numerically 2 < 12, as text "12" < "2"
    path = write_csv(tmp_path / "pairs.tsv", ["first", "second", "y"],
                     [[a, b, y] for a, b, y in zip(mrpc.text_a, mrpc.text_b, labels)], delimiter="\t")
    split, names, _ = read_split(str(path), DataSpec("classification", ("first", "second"), "y"), "train")
    assert names == ("2", "12") and split.labels == mrpc.labels
    assert split.text_a == mrpc.text_a and split.text_b == mrpc.text_b
    assert label_set(["b", "a", "b"], "classification") == ("a", "b")


def test_regression_from_parquet(glue_dir, tmp_path):
    stsb = load_task("stsb", glue_dir).evals[""].subset(range(40))
    pq.write_table(pa.table({"s1": stsb.text_a, "s2": stsb.text_b, "similarity": stsb.labels}), tmp_path / "s.parquet")
    split, labels, _ = read_split(str(tmp_path / "s.parquet"), DataSpec("regression", ("s1", "s2"), "similarity"),
                                  "train")
    assert labels == () and split.labels == stsb.labels and split.text_b == stsb.text_b


def test_multi_label_lists_and_csv_cells(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "topics": ["sport", "politics"]},
                                              {"text": "b", "topics": []}, {"text": "c", "topics": ["art"]}])
    split, labels, _ = read_split(str(path), DataSpec("multi-label", (), "topics"), "train")
    assert labels == ("art", "politics", "sport") and split.labels == [[2, 1], [], [0]]
    cells = write_csv(tmp_path / "m.csv", ["text", "topics"], [["a", '["sport", "art"]'], ["b", "politics, art"]])
    split, _, _ = read_split(str(cells), DataSpec("multi-label", (), "topics"), "eval", labels)
    assert split.labels == [[2, 0], [1, 0]]


CONLL = """-DOCSTART- -X- O O

Angela NNP B-PER
Merkel NNP I-PER
visited VBD O
Paris NNP B-LOC
. . O

Rain NN O
in IN O
Oslo NNP B-LOC
"""


def test_conll_and_jsonl_token_files(tmp_path):
    (tmp_path / "train.conll").write_text(CONLL)
    spec = DataSpec("token-classification")
    split, tags, _ = read_split(str(tmp_path / "train.conll"), spec, "train")
    assert tags == ("B-LOC", "B-PER", "I-PER", "O")
    assert split.text_a == [["Angela", "Merkel", "visited", "Paris", "."], ["Rain", "in", "Oslo"]]
    assert split.labels == [[1, 2, 3, 0, 3], [3, 3, 0]]
    path = write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Oslo", "rain"], "tags": ["B-LOC", "O"]}])
    dev, _, _ = read_split(str(path), spec, "eval", tags)
    assert dev.labels == [[0, 3]]


def test_hub_dataset_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CrammerError, match=r"^--train hf:crammer-tests/no-such-set@train: cannot load it with "
                                           r"`datasets` \(.*\); offline, a hub dataset must be in the cache"):
        read_split("hf:crammer-tests/no-such-set@train", DataSpec(), "train")


def test_hub_style_dataset_with_class_labels(tmp_path):
    """`hf:` reads any `datasets` source; class-label columns give their names (here a local parquet folder)."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"]),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-LOC"]))})
    ds = datasets.Dataset.from_dict({"text": ["bad", "good", "fine"], "label": [0, 1, 1],
                                     "tags": [[0], [1], [0]]}, features=features)
    (tmp_path / "set").mkdir()
    ds.to_parquet(str(tmp_path / "set" / "train.parquet"))
    source = f"hf:{tmp_path / 'set'}@train"
    split, labels, _ = read_split(source, DataSpec(), "train")
    assert labels == ("neg", "pos") and split.labels == [0, 1, 1] and split.text_a == ["bad", "good", "fine"]
    words, tags, _ = read_split(source, DataSpec("token-classification", ("text",), "tags"), "train")
    assert tags == ("B-LOC", "O") and words.labels == [[1], [0], [1]] and words.text_a == [["bad"], ["good"], ["fine"]]
    assert fingerprint(source, "train") == fingerprint(source, "train") and fingerprint(source, "train") != source


@pytest.mark.parametrize("name, content, kind, message", [
    ("bad.csv", "text,label\nfine,pos\n\"unclosed,neg\n", "classification", r"bad.csv:3: malformed CSV"),
    ("bad.csv", "text,label\nfine,pos\nshort\n", "classification",
     r"bad.csv:3: 1 fields where the header has 2; skip such rows with skip_malformed_rows=true$"),
    ("bad.csv", "review,label\nfine,pos\n", "classification", r"bad.csv:1: no column 'text' \(has: review, label\); "
     "name yours with --text-column / --label-column$"),
    ("bad.csv", "text,label\nfine,\n", "classification", r"bad.csv:2: column 'label': empty label"),
    ("bad.csv", "text,label\n ,pos\n", "classification", r"bad.csv:2: column 'text': empty text"),
    ("bad.csv", "text,label\nfine,high\n", "regression", r"bad.csv:2: column 'label': 'high' is not a number"),
    ("bad.csv", "text,label\nfine,nan\n", "regression", r"bad.csv:2: column 'label': 'nan' is not a finite number"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n', "classification",
     r"bad.jsonl:2: column 'label': 1.5 is not a class \(use --task regression for numbers\)"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b" "label": 1}\n', "classification",
     r"bad.jsonl:2: invalid JSON"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', "classification",
     r"bad.jsonl:2: no column 'text' \(has: txt, label\)"),
    ("bad.jsonl", '{"text": 5, "label": "x"}\n', "classification", r"bad.jsonl:1: column 'text': text is int"),
    ("bad.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', "token-classification",
     r"bad.jsonl:1: column 'tags': 1 tags for 2 words"),
    ("bad.conll", "Oslo B-LOC\nrain\n", "token-classification", r"bad.conll:2: expected 'word ... tag', got 'rain'"),
    ("bad.conll", "Oslo B-LOC\n", "classification", r"a CoNLL-style file \(.conll\) holds tagged words: use --task "
     "token-classification"),
    ("bad.xlsx", "x", "classification", r"bad.xlsx: unknown format; use .csv"),
    ("bad.csv", "", "classification", r"bad.csv: empty file \(expected a header row naming the columns\)"),
    ("bad.csv.gz", "not gzip", "classification", r"bad.csv.gz: corrupt or truncated file"),
    ("bad.csv", b"text,label\n\xff\xfe,pos\n", "classification", r"bad.csv: undecodable bytes \(not UTF-8"),
])
def test_bad_rows_are_one_line_errors(tmp_path, name, content, kind, message):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(CrammerError) as error:
        read_split(str(path), DataSpec(kind), "train")
    assert len(str(error.value).splitlines()) == 1
    assert str(error.value).startswith(str(path)) or "--train" in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)


def test_eval_labels_must_come_from_the_training_data(tmp_path):
    write_csv(tmp_path / "dev.csv", ["text", "label"], [["good", "pos"], ["meh", "neutral"]])
    with pytest.raises(CrammerError, match=rf"^{tmp_path / 'dev.csv'}:3: column 'label': label 'neutral' is not in "
                                           r"the training data \(which has neg, pos\)"):
        read_split(str(tmp_path / "dev.csv"), DataSpec(), "eval", ("neg", "pos"))
    split, _, skipped = read_split(str(tmp_path / "dev.csv"), DataSpec(), "eval", ("neg", "pos"), True)
    assert split.labels == [1] and skipped == 1
    write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Oslo"], "tags": ["B-CITY"]}])
    with pytest.raises(CrammerError, match=r"dev.jsonl:1: column 'tags': tag 'B-CITY' is not in the training data"):
        read_split(str(tmp_path / "dev.jsonl"), DataSpec("token-classification"), "eval", ("B-LOC", "O"))


def test_tsv_has_no_quoting_like_glue(glue_dir, tmp_path):
    """A `"` inside a TSV field is text (MRPC's sentences have them), not the start of a quoted field."""
    path = tmp_path / "q.tsv"
    path.write_text('text\tlabel\n" quoted start\tpos\nplain\tneg\n')
    split, _, _ = read_split(str(path), DataSpec(), "train")
    assert split.text_a == ['" quoted start', "plain"]


def test_a_one_megabyte_cell_is_ordinary_data_in_csv_and_tsv(sst2, tmp_path):
    """A long text is read whole (it is truncated to max_length later); before: `big.csv:5: malformed CSV (field
    larger than field limit (131072))`, skip_malformed_rows=true or not, while the same rows as JSONL read fine."""
    train, _ = sst2
    rows = [[t, SENTIMENT[y]] for t, y in zip(train.text_a[:8], train.labels[:8])]
    text = " ".join(train.text_a) + " "
    rows[3][0] = text * (1 + (1 << 20) // len(text))
    assert len(rows[3][0]) > 1 << 20
    spec = DataSpec("classification", ("review",), "sentiment")
    reference, _, _ = read_split(str(write_jsonl(tmp_path / "big.jsonl", [{"review": t, "sentiment": y}
                                                                           for t, y in rows])), spec, "train")
    for path in (write_csv(tmp_path / "big.csv", ["review", "sentiment"], rows),
                 write_csv(tmp_path / "big.tsv", ["review", "sentiment"], rows, delimiter="\t")):
        for skip in (False, True):
            split, labels, skipped = read_split(str(path), spec, "train", skip_malformed_rows=skip)
            assert (split.text_a, split.labels, labels, skipped) == (reference.text_a, reference.labels, ("neg", "pos"),
                                                                     0), path


def test_a_folder_given_as_data_file_is_called_a_folder(tmp_path):
    """Before: `--train DIR: no such file`, although it is there."""
    with pytest.raises(CrammerError, match=rf"^--train {tmp_path}: is a folder; give one data file$"):
        read_split(str(tmp_path), DataSpec(), "train")
    with pytest.raises(CrammerError, match=rf"^--eval {tmp_path / 'gone.csv'}: no such file$"):
        read_split(str(tmp_path / "gone.csv"), DataSpec(), "eval")


def test_labels_mixing_integers_and_names_are_warned_about(tmp_path):
    """`0`, `1` and a stray `pos` are three classes: said in so many words (before: silently)."""
    from crammer.eval.userdata import mixed_labels

    write_csv(tmp_path / "mixed.csv", ["text", "label"], [["good", "1"], ["bad", "0"], ["fine", "pos"], ["ok", "1"]])
    _, labels, _ = read_split(str(tmp_path / "mixed.csv"), DataSpec(), "train")
    assert labels == ("0", "1", "pos")
    assert mixed_labels(labels) == ("the labels mix integers (0, 1) and names (pos): 3 separate classes; fix the "
                                    "data if that is not meant")
    assert mixed_labels(("0", "1")) is None and mixed_labels(("neg", "pos")) is None
