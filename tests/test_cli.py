"""The `cram` entry points: console script, `python -m crammer`, one-line errors (a full disk and a busy
folder too), Auto registration."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crammer
from crammer.cli import main
from tests.conftest import REPO_ROOT
from tests.full_disk import full_disk_fixture  # noqa: F401 (the `full_disk` fixture)


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "crammer", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"crammer {crammer.__version__}"


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    code = main(["data", "inspect", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cram: error: ") and "nowhere" in err and "\n" not in err


def test_import_crammer_model_registers_auto_classes():
    import crammer.model  # noqa: F401
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.for_model("crammed_bert", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100)
    assert type(AutoModelForMaskedLM.from_config(config)).__name__ == "CrammedBertForMaskedLM"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_a_stop_signal_exits_128_plus_its_number_and_ctrl_c_130(signum, code, shared_data, tmp_path):
    """A real command (data preparation of a Wikipedia shard) stopped by a signal mid-way."""
    shard = sorted((shared_data / "wiki").glob("*.jsonl.xz"))[0]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "crammer", "data", "prepare", "--source", str(shard), "--out",
                                 str(tmp_path / "data"), "--workers", "1"], cwd=REPO_ROOT, stderr=err,
                                stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while "data: alphabet" not in err_path.read_text():  # reading its input now
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.1)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
    assert err_path.read_text().rstrip().endswith("cram: interrupted")
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------------------ faults
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """A tiny prepared corpus (20 pydoc topics, vocab 500), and its tokenizer for others to reuse."""
    out = tmp_path_factory.mktemp("small") / "data"
    assert main(["data", "prepare", "--source", "pydoc::max_docs=20", "--out", str(out), "--vocab-size", "500",
                 "--seq-len", "32", "--filter-ratio", "0", "--quiet"]) == 0
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_in_data_preparation_is_one_line_and_keeps_the_last_corpus(small_corpus, full_disk, wiki_sample,
                                                                               capsys):
    """The disk fills while the Wikipedia sample is packed over an earlier corpus: exit 2, one line naming the
    output, the earlier corpus byte for byte, nothing else left on the disk."""
    out = full_disk / "data"
    shutil.copytree(small_corpus, out)
    before = _files(out)
    code = main(["data", "prepare", "--source", str(wiki_sample), "--out", str(out), "--tokenizer",
                 str(small_corpus / "tokenizer.json"), "--seq-len", "32", "--filter-ratio", "0", "--quiet"])
    assert (code, capsys.readouterr().err) == (2, f"cram: error: no space left on device while writing {out}\n")
    assert _files(out) == before and os.listdir(full_disk) == ["data"]  # no temporary, no lock file
    assert main(["data", "inspect", str(out), "-n", "0"]) == 0


def test_standard_output_on_a_full_disk_is_one_line_and_exit_2(small_corpus):
    """A full disk outside crammer's own writes (here the output of `cram data inspect`, sent to /dev/full)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "crammer", "data", "inspect", str(small_corpus), "-n", "200"],
                              cwd=REPO_ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "cram: error: no space left on device while writing standard output\n")


def test_a_second_data_prepare_on_one_output_is_refused_and_a_killed_ones_leftovers_are_taken_over(
        small_corpus, shared_data, tmp_path, capsys):
    """Two real processes on one --out: the second gets one line with the first's pid, and touches nothing;
    once the first is killed (SIGKILL: no clean-up), the next run takes the lock and removes its staging folder."""
    out = tmp_path / "data"
    tokenizer = str(small_corpus / "tokenizer.json")
    shard = min((shared_data / "wiki").glob("*.jsonl.xz"))
    first = subprocess.Popen([sys.executable, "-m", "crammer", "data", "prepare", "--source", str(shard), "--out",
                              str(out), "--tokenizer", tokenizer, "--workers", "1", "--quiet"], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".data.*.tmp")):  # packing into its staging folder now
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start packing"
            time.sleep(0.1)
        staging = list(tmp_path.glob(".data.*.tmp"))
        code = main(["data", "prepare", "--source", "pydoc::max_docs=5", "--out", str(out), "--tokenizer", tokenizer,
                     "--quiet"])
        assert (code, capsys.readouterr().err) == (2, (
            f"cram: error: {out}: this prepared corpus is in use by another crammer process (pid {first.pid}); "
            "wait for it to finish or stop it, or use another folder\n"))
        assert list(tmp_path.glob(".data.*.tmp")) == staging  # the first one's staging folder is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main(["data", "prepare", "--source", "pydoc::max_docs=5", "--out", str(out), "--tokenizer", tokenizer,
                 "--seq-len", "32", "--filter-ratio", "0", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # stale staging folder and lock file gone
