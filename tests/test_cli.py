"""The `cram` entry points: console script, `python -m crammer`, one-line errors, Auto registration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import crammer
from crammer.cli import main
from tests.conftest import REPO_ROOT


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
