"""Progress displays: bars on a terminal, plain lines in a log file."""

from __future__ import annotations

import os
import subprocess
import sys

from crammer.progress import LineProgress, progress_bar
from tests.conftest import REPO_ROOT


def test_line_progress_prints_plain_lines_at_most_every_interval_and_at_the_end(capsys):
    bar = LineProgress(total=10, desc="data: packing", unit="B", every=3600)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix(docs=4)
    bar.close()
    bar.close()  # once only
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err and err.startswith("data: packing: 10/10 B, docs=4 (")
    every_time = LineProgress(desc="x", every=0)
    every_time.update(2)
    every_time.update(3)
    assert capsys.readouterr().err.splitlines()[-1].startswith("x: 5 it")


def test_off_a_terminal_the_factory_gives_lines_and_iterates(capsys):
    assert list(progress_bar(range(3), desc="docs")) == [0, 1, 2]  # pytest's stderr is not a terminal
    assert capsys.readouterr().err.startswith("docs: 3 it")
    assert list(progress_bar(range(2), show=False)) == [0, 1] and capsys.readouterr().err == ""


def test_data_preparation_logged_to_a_file_has_no_carriage_returns(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-m", "crammer", "data", "prepare", "--source", "pydoc::max_docs=20",
                        "--out", str(tmp_path / "d"), "--vocab-size", "500", "--filter-ratio", "0"], cwd=REPO_ROOT, stderr=err,
                       stdout=subprocess.DEVNULL, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    assert "\r" not in text and "data: alphabet: 20 docs" in text and "data: packing: " in text
