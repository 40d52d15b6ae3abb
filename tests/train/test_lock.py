"""One writer per run folder: a second `cram pretrain` on a folder in use stops at once, in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_a_second_pretraining_on_a_run_folder_in_use_is_refused(corpus, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "crammer", "pretrain", "--data", str(corpus), "--out", str(run), "--preset", "tiny",
           "--budget", "60s"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"cram: error: {run.resolve()}: this run folder is in use by another crammer "
                                         f"process (pid {first.pid}); wait for it to finish or stop it, or use "
                                         "another folder")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder's lock is taken over: the run resumes (or starts over) at once
    resumed = subprocess.run([*cmd[:-2], "--budget", "3s", "--resume"], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert "in use by another" not in resumed.stderr and "different config (budget_seconds)" in resumed.stderr
