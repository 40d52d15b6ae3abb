"""GLUE loaders: each task's real glue_data format, hand-written MNLI/QQP/QNLI layouts, clear errors."""

from __future__ import annotations

import time

import pytest

from crammer.errors import CrammerError
from crammer.eval.tasks import ALL_TASKS, TASKS, load_task, parse_tasks
from tests.eval.conftest import write_tsv


@pytest.mark.parametrize(
    "name, n_train, n_dev, pair, first_train_text",
    [
        ("cola", 8551, 1043, False, "Our friends won't buy this analysis, let alone the next one we propose."),
        ("sst2", 67349, 872, False, "hide new secretions from the parental units "),
        ("mrpc", 3668, 408, True, "Amrozi accused his brother , whom he called \" the witness \" , of deliberately "
                                  "distorting his evidence ."),
        ("rte", 2490, 277, True, None),
        ("wnli", 635, 71, True, None),
    ],
)
def test_real_classification_tasks(glue_dir, name, n_train, n_dev, pair, first_train_text):
    data = load_task(name, glue_dir)
    assert len(data.train) == n_train
    assert list(data.evals) == [""] and len(data.evals[""]) == n_dev
    assert (data.train.text_b is not None) == pair
    for split in (data.train, data.evals[""]):
        assert set(split.labels) == {0, 1}
        assert all(isinstance(x, int) for x in split.labels)
        assert all(t.strip() for t in split.text_a)
    if first_train_text:
        assert data.train.text_a[0] == first_train_text


def test_real_labels_follow_the_hub_order(glue_dir):
    # RTE stores words; the hub order is entailment=0, not_entailment=1
    rte = load_task("rte", glue_dir).evals[""]
    assert rte.labels[0] == TASKS["rte"].labels.index("not_entailment") == 1
    # MRPC's header begins with a BOM: the "Quality" column must still be found (first dev row is 1)
    mrpc = load_task("mrpc", glue_dir).evals[""]
    assert mrpc.labels[:2] == [1, 0] and sum(mrpc.labels) == 279


def test_real_stsb_scores(glue_dir):
    data = load_task("stsb", glue_dir)
    assert (len(data.train), len(data.evals[""])) == (5749, 1500)
    scores = data.train.labels + data.evals[""].labels
    assert min(scores) == 0.0 and max(scores) == 5.0 and len(set(scores)) > 100
    assert data.evals[""].text_a[0] == "A man with a hard hat is dancing." and data.evals[""].labels[0] == 5.0


def test_mnli_layout_two_dev_splits(tmp_path):
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    row = lambda i, label: [str(i), "1", "1e", "fiction", "(", "(", "(", "(", f"premise {i}", f"hypo {i}", label, label]  # noqa: E731
    write_tsv(tmp_path / "MNLI/train.tsv", header, [row(0, "neutral"), row(1, "contradiction"), row(2, "entailment")])
    dev_header = header[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
    dev_row = lambda i, label: row(i, label)[:-1] + [label] * 4 + [label]  # noqa: E731
    write_tsv(tmp_path / "MNLI/dev_matched.tsv", dev_header, [dev_row(0, "entailment")])
    write_tsv(tmp_path / "MNLI/dev_mismatched.tsv", dev_header, [dev_row(0, "contradiction"), dev_row(1, "neutral")])
    data = load_task("mnli", tmp_path)
    assert data.train.labels == [1, 2, 0] and data.train.text_a[2] == "premise 2" and data.train.text_b[2] == "hypo 2"
    assert data.evals["matched"].labels == [0] and data.evals["mismatched"].labels == [2, 1]


def test_qqp_and_qnli_layouts(tmp_path):
    write_tsv(tmp_path / "QQP/train.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
              [["0", "1", "2", "How?", "Why?", "0"], ["1", "3", "4", "What?", "What!", "1"]])
    write_tsv(tmp_path / "QQP/dev.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
              [["5", "6", "7", "Who?", "Whom?", "1"]])
    qqp = load_task("qqp", tmp_path)
    assert qqp.train.text_a == ["How?", "What?"] and qqp.train.text_b == ["Why?", "What!"] and qqp.train.labels == [0, 1]
    write_tsv(tmp_path / "QNLI/train.tsv", ["index", "question", "sentence", "label"],
              [["0", "Q0", "S0", "not_entailment"], ["1", "Q1", "S1", "entailment"]])
    write_tsv(tmp_path / "QNLI/dev.tsv", ["index", "question", "sentence", "label"], [["0", "Q", "S", "entailment"]])
    qnli = load_task("qnli", tmp_path)
    assert qnli.train.labels == [1, 0] and qnli.train.text_a == ["Q0", "Q1"] and qnli.evals[""].labels == [0]


def test_parse_tasks():
    assert parse_tasks("all") == ALL_TASKS and "wnli" not in ALL_TASKS
    assert parse_tasks("SST2, mrpc,sst2") == ("sst2", "mrpc")
    with pytest.raises(CrammerError, match=r"unknown GLUE task 'sst-3'.*cola"):
        parse_tasks("sst2,sst-3")


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(CrammerError, match=r"CoLA: GLUE task folder for 'cola' not found"):
        load_task("cola", tmp_path)
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b", "entailment"]])
    with pytest.raises(CrammerError, match=r"RTE/dev.tsv: split file for 'rte' not found"):
        load_task("rte", tmp_path)


def test_malformed_rows_name_file_and_line(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE/dev.tsv", header, [["0", "a", "b", "entailment"]])
    path = write_tsv(tmp_path / "RTE/train.tsv", header,
                     [["0", "a", "b", "entailment"], ["1", "only two fields"], ["2", "c", "d", "maybe"], ["3", "e", "f", "1"]])
    with pytest.raises(CrammerError, match=rf"{path}:3: malformed row \(expected 4 tab-separated fields, got 2\)"):
        load_task("rte", tmp_path)
    path.write_text(path.read_text().replace("1\tonly two fields\n", ""))
    with pytest.raises(CrammerError, match=rf"{path}:3: malformed row \(label 'maybe' is not one of entailment"):
        load_task("rte", tmp_path)
    data = load_task("rte", tmp_path, skip_malformed_rows=True)
    assert data.train.labels == [0, 1] and data.train.text_a == ["a", "e"]


def test_header_without_the_task_columns(tmp_path):
    path = write_tsv(tmp_path / "SST-2/train.tsv", ["text", "label"], [["good", "1"]])
    write_tsv(tmp_path / "SST-2/dev.tsv", ["sentence", "label"], [["good", "1"]])
    with pytest.raises(CrammerError, match=rf"{path}:1: header lacks the column 'sentence'"):
        load_task("sst2", tmp_path)


def test_hub_failure_offline_suggests_glue_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CrammerError, match=r"cannot load GLUE task 'rte' from the hub \(nyu-mll/glue\).*--glue-dir"):
        load_task("rte")
    assert time.perf_counter() - start < 30
