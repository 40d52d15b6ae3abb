"""The `cram` entry points: console script, `python -m crammer`, one-line errors, Auto registration."""

from __future__ import annotations

import subprocess
import sys

import crammer
from crammer.cli import main


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "crammer", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"crammer {crammer.__version__}"


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    code = main(["data", "inspect", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cram: error: ") and "nowhere" in err and "\n" not in err


def test_import_registers_auto_classes():
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.for_model("crammed_bert", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100)
    assert type(AutoModelForMaskedLM.from_config(config)).__name__ == "CrammedBertForMaskedLM"


def test_a_stop_signal_exits_128_plus_its_number_and_ctrl_c_130(monkeypatch, capsys):
    import signal

    import crammer.data.cli as data_cli
    from crammer.errors import SignalInterrupt

    for raised, code in ((SignalInterrupt(signal.SIGTERM), 128 + signal.SIGTERM), (KeyboardInterrupt(), 130)):
        def stopped(args, raised=raised):
            raise raised

        monkeypatch.setattr(data_cli, "_inspect", stopped)  # the parser is built per call: it takes the stand-in
        assert main(["data", "inspect", "anything"]) == code
        assert capsys.readouterr().err == "cram: interrupted\n"
