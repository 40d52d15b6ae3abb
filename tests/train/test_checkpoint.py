import json

import pytest
import torch

from crammer.errors import CrammerError
from crammer.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tests.train.conftest import model_and_optimizer, tiny

CPU = torch.device("cpu")


def trained(seed=0):
    model, optimizer = model_and_optimizer(tiny([f"seed={seed}"]), 300, CPU)
    loss = model(input_ids=torch.randint(5, 300, (2, 16)), labels=torch.randint(5, 300, (2, 16))).loss
    loss.backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_with_weights_only_load(tmp_path):
    model, optimizer = trained()
    path = save_checkpoint(tmp_path, 7, model, optimizer, {"scaler": None}, {"tokens": 123}, keep=3)
    assert path.name == "step-00000007"
    torch.load(path / "trainer.pt", weights_only=True)  # no pickled code
    fresh, fresh_opt = trained(seed=1)
    state, rest = load_checkpoint(path, fresh, fresh_opt, CPU)
    assert state["tokens"] == 123 and state["step"] == 7 and rest["scaler"] is None
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])


def test_keeps_newest_k_and_ignores_unfinished_or_truncated(tmp_path):
    model, optimizer = trained()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, optimizer, {}, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    # a write killed mid-way leaves only a temporary folder: never listed
    (tmp_path / "checkpoints" / ".step-00000005.abc.tmp").mkdir()
    (tmp_path / "checkpoints" / ".step-00000005.abc.tmp" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    # a checkpoint truncated afterwards (disk full, bad copy) is detected by its recorded sizes
    weights = tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    with pytest.raises(CrammerError, match="model.safetensors has 1000 bytes"):
        load_checkpoint(weights.parent, model, optimizer, CPU)
    (tmp_path / "checkpoints" / "step-00000003" / "state.json").write_text("{")
    assert latest_checkpoint(tmp_path) is None
    assert json.loads((weights.parent / "state.json").read_text())["step"] == 4


def test_pruning_counts_only_complete_checkpoints(tmp_path, capsys):
    """A damaged checkpoint with a higher step (e.g. the one a resumed run passed over) must not push the
    good ones out: with keep=1 the old rule deleted the checkpoint it had just written."""
    model, optimizer = trained()
    save_checkpoint(tmp_path, 3, model, optimizer, {}, {}, keep=2)
    damaged = tmp_path / "checkpoints" / "step-00000009"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"partial")  # no state.json
    save_checkpoint(tmp_path, 4, model, optimizer, {}, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert "removing incomplete checkpoint" in capsys.readouterr().err
    damaged.mkdir()
    save_checkpoint(tmp_path, 5, model, optimizer, {}, {}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005"]
    assert latest_checkpoint(tmp_path).name == "step-00000005"


def test_saving_removes_what_a_killed_write_left_behind(tmp_path):
    model, optimizer = trained()
    save_checkpoint(tmp_path, 1, model, optimizer, {}, {}, keep=3)
    root = tmp_path / "checkpoints"
    for stale in (".step-00000002.k3j4_x.tmp", ".step-00000001.old"):  # killed mid-write, killed mid-swap
        (root / stale).mkdir()
        (root / stale / "model.safetensors").write_bytes(b"partial")
    (root / "notes.txt").write_text("not ours")
    save_checkpoint(tmp_path, 2, model, optimizer, {}, {}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "step-00000001", "step-00000002"]
