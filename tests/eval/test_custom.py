"""`cram finetune` end to end on real data: each task kind trains and scores, resume, the saved best model,
MiniLM against a randomly initialised twin, and bad input refused before anything is written."""

from __future__ import annotations

import csv
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.eval.config import make_finetune_config
from crammer.eval.custom import evaluate_finetune
from crammer.eval.tasks import load_task
from crammer.eval.userdata import DataSpec
from tests.eval.test_userdata import SENTIMENT, write_csv, write_jsonl

CPU = ["device=cpu", "eval_batch_size=64"]


def _finetune(model, data, train, eval, out, overrides, logs=None, **kwargs):
    config = make_finetune_config("sane", CPU + overrides)
    return evaluate_finetune(str(model), data, str(train), str(eval), config, out,
                             log=logs.append if logs is not None else lambda m: None, **kwargs)


@pytest.fixture(scope="module")
def sst2_csv(glue_dir, tmp_path_factory):
    """SST-2 as a CSV with other column names and string labels: 400 training, 200 dev sentences."""
    data = load_task("sst2", glue_dir)
    folder = tmp_path_factory.mktemp("sst2-csv")
    for name, split, n in (("train.csv", data.train, 400), ("dev.csv", data.evals[""], 200)):
        part = split.subset(range(n))
        write_csv(folder / name, ["review", "sentiment"], [[t, SENTIMENT[y]] for t, y in zip(part.text_a, part.labels)])
    return folder / "train.csv", folder / "dev.csv"


SST2 = DataSpec("classification", ("review",), "sentiment")


def test_classification_results_resume_and_refusal(tiny_bert, sst2_csv, tmp_path):
    train, dev = sst2_csv
    out = tmp_path / "out"
    logs: list[str] = []
    results = _finetune(tiny_bert, SST2, train, dev, out, ["trials=2", "epochs=1", "max_train_examples=64"], logs)
    summary = results["tasks"]["classification"]
    assert list(summary["median"]) == ["accuracy", "macro_f1", "mcc"]  # the primary metric first
    assert results["task"]["labels"] == ["neg", "pos"] and results["data"]["train"]["examples"] == 400
    assert [t["seed"] for t in summary["trials"]] == [0, 1]
    trial = json.loads((out / "classification/trial-0.json").read_text())
    assert trial["train_examples"] == 64 and trial["eval_examples"] == {"dev": 200} and trial["steps"] == 4
    md = (out / "results.md").read_text()
    assert "| **median** |" in md and "min–max (std)" in md and "2 labels: neg, pos" in md
    assert 0 <= summary["median"]["accuracy"] <= 100 and summary["spread"]["accuracy"]["min"] <= summary[
        "median"]["accuracy"] <= summary["spread"]["accuracy"]["max"]

    before = {p: p.read_bytes() for p in out.glob("classification/trial-*.json")}
    logs.clear()
    _finetune(tiny_bert, SST2, train, dev, out, ["trials=3", "epochs=1", "max_train_examples=64"], logs)
    assert [m for m in logs if "(seed" in m] == ["classification: trial 3/3 (seed 2) on 64 examples"]
    assert all(p.read_bytes() == data for p, data in before.items())

    changed = tmp_path / "train.csv"
    changed.write_bytes(train.read_bytes().replace(b",neg", b",pos", 1))
    with pytest.raises(CrammerError, match=r"trial-0.json: made with another model, recipe or data"):
        _finetune(tiny_bert, SST2, changed, dev, out, ["trials=3", "epochs=1", "max_train_examples=64"])


def test_save_model_keeps_the_best_trial(tiny_bert, sst2_csv, tmp_path):
    """OUT/model is the best trial's model: it loads with the label names and scores what its trial scored."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train, dev = sst2_csv
    results = _finetune(tiny_bert, SST2, train, dev, tmp_path / "out", ["trials=2", "epochs=2", "lr=1e-3"],
                        save_model=True)
    best = results["tasks"]["classification"]["trials"][results["best_trial"]]
    saved = tmp_path / "out/model"
    marker = json.loads((saved / "finetune.json").read_text())
    assert marker["trial"] == results["best_trial"] and results["saved_model"] == str(saved)
    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.problem_type == "single_label_classification"
    rows = list(csv.reader(dev.open()))[1:]
    with torch.inference_mode():
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).tolist()
    accuracy = 100 * sum(model.config.id2label[p] == y for p, (_, y) in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(best["metrics"]["accuracy"], abs=0.6)  # padding may flip a near tie


def test_regression_on_parquet_pairs(tiny_bert, glue_dir, tmp_path):
    stsb = load_task("stsb", glue_dir)
    for name, split in (("train.parquet", stsb.train.subset(range(96))),
                        ("dev.parquet", stsb.evals[""].subset(range(64)))):
        pq.write_table(pa.table({"first": split.text_a, "second": split.text_b, "score": split.labels}),
                       tmp_path / name)
    results = _finetune(tiny_bert, DataSpec("regression", ("first", "second"), "score"), tmp_path / "train.parquet",
                        tmp_path / "dev.parquet", tmp_path / "out", ["trials=1", "epochs=1"])
    median = results["tasks"]["regression"]["median"]
    assert list(median) == ["pearson", "spearman"] and all(-100 <= v <= 100 for v in median.values())
    assert results["task"]["labels"] == []


def test_our_own_model_on_jsonl_pairs(tiny_crammed, glue_dir, tmp_path):
    mrpc = load_task("mrpc", glue_dir)
    names = {0: "different", 1: "same"}
    for name, split in (("train.jsonl", mrpc.train.subset(range(64))), ("dev.jsonl", mrpc.evals[""].subset(range(48)))):
        write_jsonl(tmp_path / name, [{"a": a, "b": b, "paraphrase": names[y]}
                                      for a, b, y in zip(split.text_a, split.text_b, split.labels)])
    results = _finetune(tiny_crammed, DataSpec("classification", ("a", "b"), "paraphrase"), tmp_path / "train.jsonl",
                        tmp_path / "dev.jsonl", tmp_path / "out", ["trials=1", "epochs=1"], save_model=True)
    assert results["task"]["labels"] == ["different", "same"]
    config = json.loads((tmp_path / "out/model/config.json").read_text())
    assert config["model_type"] == "crammed_bert" and config["id2label"] == {"0": "different", "1": "same"}


def _multi_label_rows(split):
    """SST-2 sentences with two real properties as labels: the sentiment and whether it is long."""
    return [{"text": t, "tags": ["positive"] * y + ["long"] * (len(t.split()) >= 12)}
            for t, y in zip(split.text_a, split.labels)]


def test_multi_label_with_minilm(minilm, glue_dir, tmp_path):
    sst2 = load_task("sst2", glue_dir)
    write_jsonl(tmp_path / "train.jsonl", _multi_label_rows(sst2.train.subset(range(160))))
    write_jsonl(tmp_path / "dev.jsonl", _multi_label_rows(sst2.evals[""].subset(range(96))))
    results = _finetune(minilm, DataSpec("multi-label", (), "tags"), tmp_path / "train.jsonl",
                        tmp_path / "dev.jsonl", tmp_path / "out", ["trials=1", "epochs=3", "lr=3e-4"],
                        save_model=True)
    median = results["tasks"]["multi-label"]["median"]
    assert list(median) == ["micro_f1", "macro_f1"] and results["task"]["labels"] == ["long", "positive"]
    assert median["micro_f1"] > 70  # 86 here; predicting every label for every sentence gives ~55
    config = json.loads((tmp_path / "out/model/config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"


CITIES = "Paris Berlin Oslo Madrid Lisbon Vienna Prague Dublin Rome Athens Warsaw Helsinki".split()
PEOPLE = [("Angela", "Merkel"), ("Marie", "Curie"), ("Alan", "Turing"), ("Ada", "Lovelace"), ("Niels", "Bohr"),
          ("Greta", "Garbo"), ("Pablo", "Picasso"), ("Frida", "Kahlo"), ("Jean", "Sibelius"), ("Karel", "Capek")]
PATTERNS = ["{p} visited {c} last year .", "In {c} , {p} gave a talk .", "{p} was born near {c} .",
            "The train to {c} was late , said {p} .", "{c} welcomed {p} warmly ."]


def _conll(path, n, rng):
    """A CoNLL-style file (word, POS placeholder, tag) of template sentences with real names and cities."""
    lines = ["-DOCSTART- -X- O", ""]
    for _ in range(n):
        first, last = rng.choice(PEOPLE)
        for word in rng.choice(PATTERNS).split():
            if word == "{p}":
                lines += [f"{first} NNP B-PER", f"{last} NNP I-PER"]
            elif word == "{c}":
                lines.append(f"{rng.choice(CITIES)} NNP B-LOC")
            else:
                lines.append(f"{word} XX O")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def test_token_classification_on_conll_with_minilm(minilm, tmp_path, capsys):
    rng = random.Random(0)
    train, dev = _conll(tmp_path / "train.conll", 96, rng), _conll(tmp_path / "dev.conll", 48, rng)
    code = main(["finetune", "--model", str(minilm), "--train", str(train), "--eval", str(dev), "--task",
                 "token-classification", "--trials", "1", "--out", str(tmp_path / "out"), "epochs=3", "lr=1e-4",
                 "device=cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "entity_f1" in printed and str(tmp_path / "out" / "results.md") in printed
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["task"]["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    median = results["tasks"]["token-classification"]["median"]
    assert median["entity_f1"] > 80 and median["token_accuracy"] > 90  # a working alignment learns this


@pytest.mark.slow
def test_minilm_beats_a_random_twin_on_sst2_csv(minilm, sst2_csv, tmp_path):
    """Pretraining must show: the same shape with random weights is far behind after the same fine-tuning."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    twin = tmp_path / "random"
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(minilm)).save_pretrained(twin)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(twin)
    train, dev = sst2_csv
    scores = {}
    for name, model in (("minilm", minilm), ("random", twin)):
        results = _finetune(model, SST2, train, dev, tmp_path / f"out-{name}", ["trials=1", "epochs=3"])
        scores[name] = results["tasks"]["classification"]["median"]["accuracy"]
    assert scores["minilm"] > 70 and scores["minilm"] > scores["random"] + 10, scores  # 77 vs 49.5 here


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.write_text(d.read_text() + "a fine film,neutral\n"),
     r"dev.csv:202: column 'sentiment': label 'neutral' is not in the training data \(which has neg, pos\)"),
    (lambda d: d.write_text("text,sentiment\nfine,pos\n"), r"dev.csv:1: no column 'review' \(has: text, sentiment\)"),
])
def test_bad_eval_file_is_one_line_and_writes_nothing(tiny_bert, sst2_csv, tmp_path, capsys, mutate, message):
    train, dev = sst2_csv
    bad = tmp_path / "dev.csv"
    bad.write_bytes(dev.read_bytes())
    mutate(bad)
    code = main(["finetune", "--model", str(tiny_bert), "--train", str(train), "--eval", str(bad), "--text-column",
                 "review", "--label-column", "sentiment", "--out", str(tmp_path / "out"), "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "out").exists()


def test_cli_refusals(tiny_bert, sst2_csv, tmp_path, capsys):
    train, dev = sst2_csv
    base = ["finetune", "--model", str(tiny_bert), "--train", str(train), "--eval", str(dev), "--out",
            str(tmp_path / "o")]
    for extra, message in [(["--text-column", "a", "--text-column", "b", "--text-column", "c"],
                            "--text-column given 3 times"),
                           (["--text-column", "review", "--label-column", "sentiment", "tasks=rte"],
                            "unknown config key 'tasks'"),
                           (["--label-column", "sentiment"], "no column 'text' (has: review, sentiment)"),
                           (["--train", str(tmp_path / "nope.csv")], "--train " + str(tmp_path / "nope.csv")
                            + ": no such file")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main([*base[:-1], str(tiny_bert)]) == 2
    assert "is the model's folder: its config.json would be overwritten" in capsys.readouterr().err
    one_label = tmp_path / "one.csv"
    write_csv(one_label, ["review", "sentiment"], [["good", "pos"], ["fine", "pos"]])
    assert main(base[:4] + [str(one_label)] + base[5:] + ["--text-column", "review", "--label-column",
                                                            "sentiment"]) == 2
    assert "has one label only ('pos')" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_save_model_never_replaces_a_folder_it_did_not_write(tiny_bert, sst2_csv, tmp_path, fake_runner):
    (tmp_path / "out/model").mkdir(parents=True)
    (tmp_path / "out/model/notes.txt").write_text("mine")
    train, dev = sst2_csv
    with pytest.raises(CrammerError, match=r"out/model: exists and is not a model saved by cram finetune"):
        _finetune(tiny_bert, SST2, train, dev, tmp_path / "out", ["trials=1"], save_model=True, runner=fake_runner)
    assert not fake_runner.calls and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]


def test_save_model_asked_on_resume_trains_the_best_seed_again(tiny_bert, sst2_csv, tmp_path):
    train, dev = sst2_csv
    args = ["trials=2", "epochs=1", "max_train_examples=64", "max_eval_examples=64"]
    first = _finetune(tiny_bert, SST2, train, dev, tmp_path / "out", args)
    assert first["saved_model"] is None and not (tmp_path / "out/model").exists()
    logs: list[str] = []
    again = _finetune(tiny_bert, SST2, train, dev, tmp_path / "out", args, logs, save_model=True)
    best = again["best_trial"]
    assert logs[-1] == f"classification: training trial {best + 1} (seed {best}) again to save it"
    marker = json.loads((tmp_path / "out/model/finetune.json").read_text())
    assert marker["trial"] == best and marker["metrics"] == first["tasks"]["classification"]["trials"][best]["metrics"]


def test_our_own_model_tags_words_and_labels_sets(tiny_crammed, tmp_path):
    """crammed BERT through the Auto classes and `problem_type`, as any Hugging Face encoder: token
    classification and multi-label train, score and save (the folders load with the Auto classes)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    rng = random.Random(1)
    train, dev = _conll(tmp_path / "train.conll", 32, rng), _conll(tmp_path / "dev.conll", 16, rng)
    tags = _finetune(tiny_crammed, DataSpec("token-classification"), train, dev, tmp_path / "tags",
                     ["trials=1", "epochs=1"], save_model=True)
    assert set(tags["tasks"]["token-classification"]["median"]) == {"entity_f1", "token_accuracy"}
    tagger = AutoModelForTokenClassification.from_pretrained(tmp_path / "tags/model")
    assert tagger.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}
    rows = [{"text": " ".join(f"w{rng.randrange(9)}" for _ in range(6)), "tags": rng.sample(["a", "b", "c"], 2)}
            for _ in range(40)]
    write_jsonl(tmp_path / "m.jsonl", rows)
    multi = _finetune(tiny_crammed, DataSpec("multi-label", (), "tags"), tmp_path / "m.jsonl", tmp_path / "m.jsonl",
                      tmp_path / "multi", ["trials=1", "epochs=1"], save_model=True)
    assert set(multi["tasks"]["multi-label"]["median"]) == {"micro_f1", "macro_f1"}
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "multi/model").config.problem_type == \
        "multi_label_classification"


def test_finetune_reads_a_one_megabyte_csv_cell_and_warns_about_mixed_labels(tiny_bert, sst2_csv, tmp_path, capsys):
    """Before: `big.csv:5: malformed CSV (field larger than field limit (131072))`, exit 2; labels `0`, `1` and
    `pos` silently made three classes."""
    train, dev = sst2_csv
    rows = list(csv.reader(train.open()))[:41]
    rows[4][0] = " ".join(r[0] for r in rows[1:]) * 700  # 1.5 MB
    for row, label in zip(rows[1:], ["0", "1"] * 19 + ["pos"]):
        row[1] = label
    big = tmp_path / "big.csv"
    write_csv(big, rows[0], rows[1:])
    assert len(rows[4][0]) > 1 << 20
    assert main(["finetune", "--model", str(tiny_bert), "--train", str(big), "--eval", str(big), "--text-column",
                 "review", "--label-column", "sentiment", "--out", str(tmp_path / "out"), "--trials", "1", "epochs=1",
                 "device=cpu", "max_length=32"]) == 0
    err = capsys.readouterr().err
    assert (f"cram finetune: warning: --train {big}: column 'sentiment': the labels mix integers (0, 1) and names "
            "(pos): 3 separate classes; fix the data if that is not meant") in err
    assert json.loads((tmp_path / "out/results.json").read_text())["data"]["train"]["examples"] == 40


def test_a_lone_surrogate_in_finetune_data_is_a_bad_row(tiny_bert, sst2_csv, tmp_path, capsys):
    """Before: `TypeError: TextEncodeInput must be Union[...]` from the tokenizer, a traceback."""
    train, _ = sst2_csv
    rows = [{"review": t, "sentiment": y} for t, y in list(csv.reader(train.open()))[1:41]]
    rows[6]["review"] = rows[6]["review"][:5] + "\ud800" + rows[6]["review"][5:]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    args = ["finetune", "--model", str(tiny_bert), "--train", str(data), "--eval", str(data), "--text-column",
            "review", "--label-column", "sentiment", "--out", str(tmp_path / "out"), "--trials", "1", "epochs=1",
            "device=cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err == (f"cram: error: {data}:7: column 'review': a lone surrogate '\\ud800' at "
                                       "character 6 (not valid Unicode); skip such rows with skip_malformed_rows=true\n")
    assert not (tmp_path / "out").exists()
    assert main([*args, "skip_malformed_rows=true"]) == 0
    assert f"{data}: skipped 1 malformed row(s)" in capsys.readouterr().err


def test_a_classifier_that_predicts_one_class_is_warned_about_next_to_the_baseline(tiny_bert, glue_dir, tmp_path,
                                                                                   capsys):
    """Before: "accuracy 65.0" while every prediction is the majority class (MCC 0.0), without a word. A model
    fine-tuned with a learning rate that makes it collapse on real CoLA sentences: the log warns, results.md carries
    the majority-class baseline row and the warning, and `--metric mcc` heads the table."""
    cola = load_task("cola", glue_dir)
    for name, split, n in (("train.csv", cola.train, 200), ("dev.csv", cola.evals[""], 100)):
        part = split.subset(range(n))
        write_csv(tmp_path / name, ["sentence", "acceptable"], [[t, str(y)] for t, y in zip(part.text_a, part.labels)])
    majority = max(part.labels.count(0), part.labels.count(1))
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(tiny_bert), "--train", str(tmp_path / "train.csv"), "--eval",
                 str(tmp_path / "dev.csv"), "--text-column", "sentence", "--label-column", "acceptable", "--metric",
                 "mcc", "--out", str(out), "--trials", "1", "device=cpu", "precision=fp32", "lr=0.05", "epochs=1", "max_length=32"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("mcc 0.0, accuracy ")
    assert ("cram finetune: classification: warning: trial 1 predicted one class for every evaluation example: it "
            f"learned no more than the class balance (majority-class baseline: accuracy {majority:.1f}, ") in captured.err
    results = json.loads((out / "results.json").read_text())
    summary = results["tasks"]["classification"]
    assert results["primary_metric"] == "mcc"
    assert summary["baseline"]["mcc"] == 0.0 and summary["baseline"]["accuracy"] == majority
    assert summary["single_class_trials"] == [0]
    md = (out / "results.md").read_text()
    assert "**mcc: 0.0** (median; majority-class baseline 0.0)" in md
    assert "| trial | seed | mcc | accuracy | macro_f1 | train time (s) |" in md
    assert f"| majority-class baseline | | 0.0 | {majority:.1f} |" in md
    assert "**Warning**: trial(s) 1 predicted one class for every evaluation example" in md
    assert main(["finetune", "--model", str(tiny_bert), "--train", str(tmp_path / "train.csv"), "--eval",
                 str(tmp_path / "dev.csv"), "--metric", "f1", "--out", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err == ("cram: error: --metric f1: classification is scored by accuracy, macro_f1, "
                                       "mcc\n")
