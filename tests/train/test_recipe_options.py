"""The recipe options of the better-recipe study (Muon, a decreasing masking rate, WSD with a 1-sqrt decay) in
real runs: they train, survive a checkpoint and resume exactly (optimizer state included), and two gloo
processes match one."""

import os
import shutil

import pytest
import torch
import torch.multiprocessing as mp

from crammer.train.checkpoint import latest_checkpoint
from crammer.train.loop import pretrain
from tests.train.conftest import metrics, tiny, validation

OPTIONS = ["optim.name=muon", "optim.muon_lr=0.01", "masking.fraction=0.4", "masking.schedule=linear",
           "masking.final_fraction=0.15", "schedule.lr=wsd", "schedule.peak=0.1", "schedule.decay=0.4",
           "schedule.decay_shape=sqrt"]
TOKENS = 64 * 16 * 12


def test_the_options_train_and_a_resumed_run_reproduces_the_uninterrupted_one(corpus, tmp_path):
    cfg = tiny([*OPTIONS, "checkpoint.every_steps=5", "batch.target=16", "eval.every_steps=6"], tokens=TOKENS)
    plain = pretrain(cfg, corpus, tmp_path / "plain")
    rows = metrics(tmp_path / "plain")
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3 and rows[-1]["lr"] < 0.2 * max(r["lr"] for r in rows)
    run = tmp_path / "resumed"
    pretrain(cfg, corpus, run)
    shutil.rmtree(run / "final")  # as if killed after the step-15 checkpoint
    assert latest_checkpoint(run).name == "step-00000015"
    final = pretrain(cfg, corpus, run, resume=True)
    assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in rows], rel=1e-5)
    assert (final / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()


def _ddp_worker(rank, world_size, port, corpus, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    pretrain(tiny([*OPTIONS, "batch.micro_batch=4", "batch.target=16", "eval.every_steps=4"], tokens=TOKENS),
             corpus, out)


@pytest.mark.slow
def test_two_gloo_processes_with_the_options_match_one(corpus, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(corpus), str(tmp_path / "ddp")), nprocs=2, join=True)
    pretrain(tiny([*OPTIONS, "batch.micro_batch=8", "batch.target=16", "eval.every_steps=4"], tokens=TOKENS),
             corpus, tmp_path / "single")
    ddp, single = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=2e-3)
    assert [r["val_loss"] for r in validation(tmp_path / "ddp")] == pytest.approx(
        [r["val_loss"] for r in validation(tmp_path / "single")], rel=2e-3)
