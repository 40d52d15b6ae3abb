"""The run folder's records: one folder is one experiment, finished stages are remembered."""

from __future__ import annotations

import json

import pytest
import torch

from crammer.errors import CrammerError
from crammer.pipeline.state import versions, write_run_record
from crammer.runfiles import RunState


def test_run_record_refuses_a_different_config(tmp_path):
    config = {"preset": "tiny", "pretrain": {"budget_seconds": 20.0, "optim": {"lr": 1e-3}}}
    first = write_run_record(tmp_path, config, ["cram", "run"])
    assert write_run_record(tmp_path, config, ["cram", "run", "again"]) == first  # same config: fine
    changed = {"preset": "tiny", "pretrain": {"budget_seconds": 20.0, "optim": {"lr": 5e-4}}}
    with pytest.raises(CrammerError, match=r"run.json: .*different config \(differs in: pretrain.optim.lr\)"):
        write_run_record(tmp_path, changed, ["cram", "run"])
    # A folder where no stage has finished may take the new config over.
    assert write_run_record(tmp_path, changed, ["cram", "run"], replace=True)["config"] == changed
    assert write_run_record(tmp_path, changed, ["cram", "run"])["config"] == changed


def test_state_survives_reload_and_bad_state_is_named(tmp_path):
    state = RunState.load(tmp_path)
    assert not state.done("data")
    state.finish("data", 1.5, data_dir="/somewhere")
    again = RunState.load(tmp_path)
    assert again.done("data") and again.stages["data"]["data_dir"] == "/somewhere"
    assert again.stages["data"]["seconds"] == 1.5
    again.finish("data", 2.0, data_dir="/somewhere")  # finished again (a retry): the times add up
    assert RunState.load(tmp_path).stages["data"]["seconds"] == 3.5
    (tmp_path / "state.json").write_text(json.dumps({"stages": []}))
    with pytest.raises(CrammerError, match="state.json: field 'stages' must be an object"):
        RunState.load(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CrammerError, match=r"state.json:1: invalid JSON"):
        RunState.load(tmp_path)


def test_versions_name_the_software():
    info = versions()
    for key in ("python", "torch", "transformers", "tokenizers", "crammer", "device", "git_commit"):
        assert info[key]
    assert info["device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
