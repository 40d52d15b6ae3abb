"""End to end: tiny models fine-tuned on small subsets of the real tasks; results files, resume, CLI, errors."""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import pytest

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.eval.cli import _slug
from crammer.eval.config import make_glue_config
from crammer.eval.glue import evaluate_glue
from crammer.eval.tasks import TASKS
from crammer.runtime import cpu_has_native_bf16
from tests.eval.conftest import write_tsv

# precision=auto on CPU: bf16 autocast where the CPU multiplies bf16 natively
CPU_AUTO_PRECISION = "bfloat16" if cpu_has_native_bf16() else "float32"
SMALL = ["device=cpu", "epochs=1", "max_train_examples=48", "max_eval_examples=40", "eval_batch_size=16"]


def _run(model, out, overrides, logs=None, **kwargs):
    return evaluate_glue(str(model), make_glue_config("sane", SMALL + overrides), out,
                         log=(logs.append if logs is not None else lambda m: None), **kwargs)


def test_results_files_and_resume(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "glue"
    logs: list[str] = []
    results = _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=cola,mrpc,stsb", "trials=2"], logs)
    assert sum("trial" in m and "(seed" in m for m in logs) == 6
    for task, keys in {"cola": ["mcc"], "mrpc": ["f1", "accuracy"], "stsb": ["pearson", "spearman"]}.items():
        runs = [json.loads((out / task / f"trial-{k}.json").read_text()) for k in range(2)]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["epochs"] == 1 for r in runs)
        assert all(sorted(r["metrics"]) == sorted(keys) and r["train_examples"] == 48 for r in runs)
        assert all(r["eval_examples"] == {"dev": 40} and r["train_seconds"] > 0 for r in runs)
        assert all(r["steps"] == 3 and r["precision"] == CPU_AUTO_PRECISION for r in runs)
        assert list(results["tasks"][task]["median"]) == keys  # the scored metric first
        for key in keys:
            assert results["tasks"][task]["median"][key] == statistics.median(r["metrics"][key] for r in runs)
    assert set(results["glue_numbers"]) == {"CoLA", "MRPC", "STS-B"} and results["glue_score"] is None
    assert results["mean_over_tasks_run"] == pytest.approx(statistics.mean(results["glue_numbers"].values()))
    assert json.loads((out / "results.json").read_text())["glue_numbers"] == results["glue_numbers"]
    md = (out / "results.md").read_text()
    for text in ("## cola", "## mrpc", "## stsb", "| **median** |", "80.9", "80.7", "72.7", "Subsets"):
        assert text in md
    assert json.loads((out / "config.json").read_text())["config"]["tasks"] == ["cola", "mrpc", "stsb"]

    # resume: finished trials are kept, only the new third trial of each task runs
    before = {p: p.read_bytes() for p in out.glob("*/trial-*.json")}
    logs.clear()
    results = _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=cola,mrpc,stsb", "trials=3"], logs)
    ran = [m for m in logs if "(seed" in m]
    assert len(ran) == 3 and all("trial 3/3 (seed 2)" in m for m in ran)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert len(results["tasks"]["cola"]["trials"]) == 3
    logs.clear()
    _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=cola", "trials=3"], logs)
    assert logs == ["cola: all 3 trials already done"]

    config_before = (out / "config.json").read_bytes()
    with pytest.raises(CrammerError, match=r"trial-0.json: made with another model, recipe or data; use a fresh "
                                           r"--out \(or delete the folder to redo its trials\)$"):
        _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=cola", "lr=1e-3"])
    assert (out / "config.json").read_bytes() == config_before  # the refused run changed nothing
    assert "| min–max (std) |" in md and set(results["tasks"]["cola"]["spread"]["mcc"]) == {"min", "max", "std"}


def test_finetuning_learns_an_easy_task(tiny_bert, tmp_path):
    """Word 'good' vs 'bad' among random filler words, of varied lengths: a working loop must solve it.

    This also checks that predictions made in length-sorted batches are put back in the dev order.
    """
    rng = random.Random(0)
    filler = "the a of city river music war king year people house light".split()

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.randrange(2)
            words = [rng.choice(filler) for _ in range(rng.randrange(2, 30))]
            words.insert(rng.randrange(len(words)), "good" if label else "bad")
            out.append([" ".join(words), str(label)])
        return out

    write_tsv(tmp_path / "data/SST-2/train.tsv", ["sentence", "label"], rows(320))
    write_tsv(tmp_path / "data/SST-2/dev.tsv", ["sentence", "label"], rows(120))
    results = evaluate_glue(str(tiny_bert), make_glue_config("sane", [
        "device=cpu", "tasks=sst2", "trials=1", "epochs=3", "lr=3e-3", "dropout=0", f"glue_dir={tmp_path / 'data'}"]),
        tmp_path / "out", log=lambda m: None)
    assert results["tasks"]["sst2"]["median"]["accuracy"] > 90


def test_mnli_scores_both_dev_splits(tiny_bert, tmp_path):
    header = ["index", "sentence1", "sentence2", "gold_label"]
    labels = ["entailment", "neutral", "contradiction"]
    rows = [[str(i), f"premise number {i}", f"hypothesis {i % 7}", labels[i % 3]] for i in range(40)]
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        write_tsv(tmp_path / "glue/MNLI" / name, header, rows)
    results = _run(tiny_bert, tmp_path / "out", [f"glue_dir={tmp_path / 'glue'}", "tasks=mnli", "trials=1"])
    assert set(results["tasks"]["mnli"]["median"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert set(results["glue_numbers"]) == {"MNLI-m", "MNLI-mm"}


def test_crammed_model_end_to_end_in_bf16(tiny_crammed, glue_dir, tmp_path):
    results = _run(tiny_crammed, tmp_path / "out", [f"glue_dir={glue_dir}", "tasks=rte", "trials=1", "precision=bf16",
                                                    "pad_multiple=16", "bucket_batches=2", "batch_size=8"])
    trial = json.loads((tmp_path / "out/rte/trial-0.json").read_text())
    assert trial["precision"] == "bfloat16" and trial["steps"] == 6
    assert 0 <= results["tasks"]["rte"]["median"]["accuracy"] <= 100


def test_cli(tiny_bert, glue_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["glue", "--model", str(tiny_bert), "--tasks", "rte", "--glue-dir", str(glue_dir), "--trials", "1",
                 "--out", str(out), "--max-train-examples", "32", "--max-eval-examples", "24", "epochs=1",
                 "device=cpu", "seed=5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "RTE" in printed and str(out / "results.md") in printed
    trial = json.loads((out / "rte/trial-0.json").read_text())
    assert trial["seed"] == 5 and trial["train_examples"] == 32 and trial["eval_examples"] == {"dev": 24}


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "rte,sst5"], "unknown GLUE task 'sst5'"),
    (["--protocol", "sane", "lr=abc"], "lr: expected a number"),
    (["device=tpu"], "device='tpu' is not a torch device"),
    (["lr=0"], "lr must be a positive number"),
    (["protocol=full"], "protocol is not an override"),
])
def test_cli_errors_are_one_line(tiny_bert, glue_dir, tmp_path, capsys, argv, message):
    code = main(["glue", "--model", str(tiny_bert), "--glue-dir", str(glue_dir), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_not_a_model(tiny_bert, tmp_path, glue_dir, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes())
    for model, message in [(tmp_path / "empty", "not a model folder (no config.json)"),
                           (tmp_path / "missing", f"no such model folder: {tmp_path / 'missing'}"),
                           (tmp_path / "broken", "cannot load its tokenizer")]:
        code = main(["glue", "--model", str(model), "--tasks", "rte", "--glue-dir", str(glue_dir),
                     "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err


def test_model_without_weights_is_refused_before_any_work(tiny_bert, glue_dir, tmp_path, fake_runner):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for f in Path(tiny_bert).iterdir():
        if not f.name.endswith(".safetensors"):
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CrammerError, match=r"no-weights: no weights in the folder \(expected one of model.safetensors"):
        _run(folder, tmp_path / "out", [f"glue_dir={glue_dir}", "tasks=rte", "trials=1"], runner=fake_runner)
    assert not (tmp_path / "out").exists() and not fake_runner.calls


def test_max_length_beyond_the_position_table_is_refused_up_front(tiny_bert, glue_dir, tmp_path, capsys):
    """It used to fail mid-training, at the first batch longer than 128 tokens, with a deep traceback."""
    code = main(["glue", "--model", str(tiny_bert), "--tasks", "rte", "--glue-dir", str(glue_dir), "--out",
                 str(tmp_path / "o"), "max_length=512"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "o").exists()
    assert "max_length=512 exceeds the max_position_embeddings=128 of --model" in err[0]


def test_inputs_are_truncated_to_max_length(tiny_bert, glue_dir, tmp_path, fake_runner):
    _run(tiny_bert, tmp_path / "out", [f"glue_dir={glue_dir}", "tasks=rte", "trials=1", "max_length=24"],
         runner=fake_runner)
    (call,) = fake_runner.calls
    assert call["cfg"].max_length == 24 and call["spec"] == TASKS["rte"].spec
    for data in (call["train"], *call["evals"].values()):
        assert max(data.lengths) == 24  # RTE's premises are longer: every split is cut
        rows = [data.input_ids(i) for i in range(len(data))]
        assert all(ids[-1] == rows[0][-1] for ids in rows if len(ids) == 24)  # ends with [SEP]


def test_missing_task_data_is_reported_before_the_first_trial(tiny_bert, glue_dir, tmp_path, fake_runner):
    local = tmp_path / "glue"
    shutil.copytree(glue_dir / "RTE", local / "RTE")
    shutil.copytree(glue_dir / "MRPC", local / "MRPC")
    (local / "MRPC" / "dev.tsv").unlink()
    with pytest.raises(CrammerError) as error:
        _run(tiny_bert, tmp_path / "out", [f"glue_dir={local}", "tasks=rte,mrpc,cola", "trials=1"],
             runner=fake_runner)
    assert str(error.value) == (f"--glue-dir {local}: no data for mrpc, cola ({local / 'MRPC' / 'dev.tsv'}, "
                                f"{local / 'CoLA'} not found); leave those tasks out of --tasks")
    assert not fake_runner.calls and not (tmp_path / "out").exists()
    _run(tiny_bert, tmp_path / "out", [f"glue_dir={local}", "tasks=rte", "trials=1"], runner=fake_runner)  # `cram run`
    assert [c["desc"] for c in fake_runner.calls] == ["rte trial 1/1"]
    # a task whose trials are all done needs no data
    shutil.rmtree(local / "RTE")
    _run(tiny_bert, tmp_path / "out", [f"glue_dir={local}", "tasks=rte", "trials=1"], runner=fake_runner)
    assert len(fake_runner.calls) == 1


def test_resume_keys_on_the_model_folder_and_its_files(tiny_bert, glue_dir, tmp_path, monkeypatch, fake_runner):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert, tmp_path / "runs/x/final")
    config = make_glue_config("sane", ["tasks=rte", "trials=1", f"glue_dir={glue_dir}"])
    for spelling in ("runs/x/final", "runs/x/final/", "./runs/x/final", str(tmp_path / "runs/x/final")):
        evaluate_glue(spelling, config, "o", log=lambda m: None, runner=fake_runner)
    assert len(fake_runner.calls) == 1  # the other spellings resumed the finished trial

    # the same folder, retrained: its trials are stale
    weights = tmp_path / "runs/x/final/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CrammerError, match="trial-0.json: made with another model, recipe or data"):
        evaluate_glue("runs/x/final", config, "o", log=lambda m: None, runner=fake_runner)


def test_default_out_names_the_models_folder(tiny_bert, glue_dir, tmp_path, monkeypatch, capsys):
    """Two models saved as `.../final` get their own results folders (the second used to be refused)."""
    monkeypatch.chdir(tmp_path)
    for run in ("demo", "other"):
        shutil.copytree(tiny_bert, tmp_path / f"runs/{run}/pretrain/final")
        assert main(["glue", "--model", f"runs/{run}/pretrain/final/", "--tasks", "rte", "--glue-dir", str(glue_dir),
                     "--trials", "1", "--protocol", "full", "--max-train-examples", "8", "--max-eval-examples", "8",
                     "epochs=1", "device=cpu"]) == 0
        assert f"runs/glue/{run}-pretrain-final-full/results.md" in capsys.readouterr().out
    assert _slug("google/electra-small-discriminator") == "google-electra-small-discriminator"
    assert _slug("bert-base-uncased") == "bert-base-uncased"


@pytest.mark.slow
def test_compiled_model_matches_eager(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """`compile=true` trains the same model, with one graph for training and one for scoring however many
    batch lengths there are (not a recompile per length); ~40 s of compiling on 2 CPU cores."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import crammer.eval.finetune as finetune

    shapes = set()
    collate = finetune.collate

    def recording_collate(*args):
        batch = collate(*args)
        shapes.add(batch["input_ids"].shape)
        return batch

    monkeypatch.setattr(finetune, "collate", recording_collate)
    common = [f"glue_dir={glue_dir}", "tasks=cola", "trials=1", "max_train_examples=24", "max_eval_examples=8",
              "dropout=0", "batch_size=4", "eval_batch_size=4", "pad_multiple=1", "bucket_batches=1"]
    eager = _run(tiny_bert, tmp_path / "eager", common)
    torch._dynamo.reset()
    counters.clear()
    compiled = _run(tiny_bert, tmp_path / "compiled", common + ["compile=true"])
    assert len(shapes) >= 6 and counters["stats"]["unique_graphs"] == 2
    trial = lambda d: json.loads((tmp_path / d / "cola/trial-0.json").read_text())  # noqa: E731
    assert trial("compiled")["compiled"] and not trial("eager")["compiled"]
    assert trial("compiled")["last_epoch_train_loss"] == pytest.approx(trial("eager")["last_epoch_train_loss"],
                                                                      rel=1e-3)
    assert compiled["tasks"]["cola"]["median"] == eager["tasks"]["cola"]["median"]


def test_trials_from_before_the_sane_betas_say_so(tiny_bert, glue_dir, tmp_path, fake_runner):
    """The `sane` recipe's AdamW betas/eps changed (0.9/0.98, 1e-6): old folders are refused with the reason."""
    out = tmp_path / "out"
    _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=rte", "trials=1"], runner=fake_runner)
    config = json.loads((out / "config.json").read_text())
    del config["config"]["adam_betas"], config["config"]["adam_eps"]  # as the old code wrote it
    (out / "config.json").write_text(json.dumps(config))
    trial = json.loads((out / "rte/trial-0.json").read_text())
    (out / "rte/trial-0.json").write_text(json.dumps({**trial, "trial_key": "made-by-the-old-recipe"}))
    with pytest.raises(CrammerError, match=r"rte/trial-0.json: made with another model, recipe or data; it predates "
                                           r"the protocols' AdamW betas and eps .*; use a fresh --out"):
        _run(tiny_bert, out, [f"glue_dir={glue_dir}", "tasks=rte", "trials=1"], runner=fake_runner)
