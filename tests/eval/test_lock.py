"""One writer per results folder: GLUE and fine-tuning refuse a folder another process is writing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crammer.errors import CrammerError
from crammer.eval.config import make_glue_config
from crammer.eval.glue import evaluate_glue
from tests.conftest import REPO_ROOT

HOLD = "import sys, time\nfrom crammer.io import exclusive_folder\nwith exclusive_folder(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def test_glue_refuses_a_results_folder_in_use(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "glue"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = make_glue_config("sane", [f"glue_dir={glue_dir}", "tasks=rte", "trials=1", "epochs=1",
                                           "max_train_examples=16", "max_eval_examples=16"])
        with pytest.raises(CrammerError, match=rf"in use by another crammer process \(pid {holder.pid}\)"):
            evaluate_glue(str(tiny_bert), config, out, log=lambda m: None)
        assert not out.exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
