"""Runs that are interrupted, resumed, or spread over two processes reproduce the plain run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from crammer.errors import CrammerError
from crammer.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from crammer.train.loop import Pretrainer, pretrain
from tests.conftest import REPO_ROOT
from tests.train.conftest import metrics, model_and_optimizer, tiny, validation

TOKENS = 64 * 16 * 30


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in metrics(run_dir)]


@pytest.mark.slow
def test_sigterm_checkpoint_then_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    overrides = ["checkpoint.every_steps=4", "data.order=shuffled", "batch.target=16"]
    pretrain(tiny(overrides, tokens=TOKENS), corpus, tmp_path / "plain")

    run = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "crammer", "pretrain", "--data", str(corpus), "--out", str(run),
           "--preset", "tiny", "--budget-tokens", str(TOKENS), *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 7:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    checkpoint = latest_checkpoint(run)
    stopped_at = int(checkpoint.name.split("-")[1])
    assert stopped_at >= 7 and not (run / "final").exists()
    model, optimizer = model_and_optimizer(tiny(), 2000, torch.device("cpu"))
    state, _ = load_checkpoint(checkpoint, model, optimizer, torch.device("cpu"))
    assert state["step"] == stopped_at and state["elapsed"] > 0

    pretrain(tiny(overrides, tokens=TOKENS), corpus, run, resume=True)
    plain, resumed = losses(tmp_path / "plain"), losses(run)
    assert [s for s, _ in resumed] == [s for s, _ in plain]  # no gaps, no duplicated records
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in plain], rel=1e-4)
    a = (tmp_path / "plain" / "final" / "model.safetensors").read_bytes()
    assert len(a) == len((run / "final" / "model.safetensors").read_bytes())


def test_resume_rejects_a_changed_recipe_and_skips_damaged_checkpoints(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny(["checkpoint.every_steps=2"], tokens=64 * 8 * 12)
    pretrain(cfg, corpus, run)
    with pytest.raises(Exception, match="different config \\(optim\\)"):
        pretrain(tiny(["checkpoint.every_steps=2", "optim.lr=1e-2"], tokens=64 * 8 * 12), corpus, run, resume=True)
    older, newest = list_checkpoints(run)[-2:]
    (newest / "trainer.pt").write_bytes(b"truncated")
    (run / "final").rename(tmp_path / "old-final")
    pretrain(cfg, corpus, run, resume=True)
    err = capsys.readouterr().err
    assert f"skipping checkpoint: {newest}: damaged or incomplete checkpoint (trainer.pt has 9 bytes" in err
    assert "Traceback" not in err
    steps = [r["step"] for r in metrics(run)]
    assert steps == sorted(set(steps)) and (run / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("damage", ["safetensors header", "trainer.pt start", "trainer.pt middle"])
def test_a_damaged_checkpoint_of_unchanged_size_is_passed_over_then_refused(corpus, tmp_path, capsys, damage):
    """The bytes change, the sizes do not: only the recorded digests notice. With every checkpoint damaged the
    run stops with one line (no traceback, no advice to load untrusted pickles)."""
    run = tmp_path / "run"
    cfg = tiny(["checkpoint.every_steps=2", "checkpoint.keep=2"], tokens=64 * 8 * 12)
    pretrain(cfg, corpus, run)
    (run / "final").rename(tmp_path / "old-final")
    older, newest = list_checkpoints(run)[-2:]

    def spoil(checkpoint):
        name, offset = {"safetensors header": ("model.safetensors", 8), "trainer.pt start": ("trainer.pt", 0),
                        "trainer.pt middle": ("trainer.pt", None)}[damage]
        data = bytearray((checkpoint / name).read_bytes())
        at = len(data) // 2 if offset is None else offset
        data[at:at + 16] = bytes(16) if data[at:at + 16] != bytes(16) else b"\xff" * 16
        (checkpoint / name).write_bytes(bytes(data))

    spoil(newest)
    trainer = Pretrainer(cfg, corpus, run, resume=True)
    err = capsys.readouterr().err
    assert trainer.state.step == int(older.name.split("-")[1])  # resumed from the older one
    assert f"skipping checkpoint: {newest}: damaged or incomplete checkpoint" in err
    assert "does not match its recorded sha256" in err
    trainer.stream.close()
    spoil(older)
    with pytest.raises(CrammerError, match=r"no checkpoint can be loaded \(all 2 are damaged"):
        Pretrainer(cfg, corpus, run, resume=True)
    err = capsys.readouterr().err
    assert "weights_only" not in err and "Traceback" not in err


def _ddp_worker(rank, world_size, port, corpus, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    pretrain(tiny(["batch.micro_batch=4", "batch.target=16", "eval.every_steps=4"], tokens=64 * 16 * 12), corpus, out)


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(corpus, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(corpus), str(tmp_path / "ddp")), nprocs=2, join=True)
    pretrain(tiny(["batch.micro_batch=8", "batch.target=16", "eval.every_steps=4"], tokens=64 * 16 * 12), corpus,
             tmp_path / "single")
    ddp, single = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert [r["batch_size"] for r in ddp] == [r["batch_size"] for r in single]
    assert ddp[0]["micro_batch"] == 4 and single[0]["micro_batch"] == 8
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=2e-3)
    # each rank holds the global norm: the logged one is that, not a sum over ranks
    assert [r["grad_norm"] for r in ddp] == pytest.approx([r["grad_norm"] for r in single], rel=2e-3)
    # each rank validates half of the subset; the all-reduced sums are the one-process numbers
    ddp_val, single_val = validation(tmp_path / "ddp"), validation(tmp_path / "single")
    assert [r["step"] for r in ddp_val] == [r["step"] for r in single_val] and len(ddp_val) >= 2
    assert [r["val_loss"] for r in ddp_val] == pytest.approx([r["val_loss"] for r in single_val], rel=2e-3)


# The keys of pretrain_config.json as crammer 0.1 (before the optimizer builder, commit 7ffd0b0) wrote them.
CONFIG_KEYS_0_1 = {
    "model": None, "model_overrides": None, "budget_seconds": None, "budget_tokens": None, "seed": None,
    "precision": None, "tf32": None, "compile": None,
    "optim": {"lr": None, "betas": None, "eps": None, "weight_decay": None, "grad_clip": None, "fused": None},
    "schedule": {"lr": None, "peak": None, "initial": None, "decay": None},
    "batch": {"micro_batch": None, "target": None, "ramp": None, "memory_fraction": None},
    "masking": {"fraction": None, "replace_mask": None, "replace_random": None},
    "data": {"order": None, "prefetch": None},
    "checkpoint": {"every_seconds": None, "every_steps": None, "keep": None},
    "eval": {"every_seconds": None, "every_steps": None, "max_share": None, "sequences": None},
    "guard": {"max_nonfinite_in_a_row": None, "max_rollbacks": None},
    "logging": {"every_steps": None, "tensorboard": None, "wandb": None, "wandb_project": None, "peak_tflops": None},
}


def _only_keys(config, layout):
    return {k: _only_keys(v, layout[k]) if isinstance(layout[k], dict) else v
            for k, v in config.items() if k in layout}


def test_a_run_checkpointed_by_an_older_version_still_resumes(corpus, tmp_path):
    """A run folder whose pretrain_config.json lacks the settings added since (written by crammer 0.1) resumes
    from its last checkpoint, as the same run: the new settings at their defaults change nothing."""
    cfg = tiny(["checkpoint.every_steps=4", "batch.target=16"], tokens=64 * 16 * 10)
    plain = pretrain(cfg, corpus, tmp_path / "plain")
    run = tmp_path / "old"
    pretrain(cfg, corpus, run)
    shutil.rmtree(run / "final")  # killed after its last checkpoint (step 8), before final/
    saved = json.loads((run / "pretrain_config.json").read_text())
    old = {**_only_keys(saved, CONFIG_KEYS_0_1), "config_hash": "written-by-0.1"}
    assert old != {**saved, "config_hash": "written-by-0.1"}  # the layout did change since
    (run / "pretrain_config.json").write_text(json.dumps(old))

    final = pretrain(cfg, corpus, run, resume=True)
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in metrics(tmp_path / "plain")]
    assert [loss for _, loss in losses(run)] == pytest.approx([loss for _, loss in losses(tmp_path / "plain")], rel=1e-4)
    assert (final / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    changed = tiny(["checkpoint.every_steps=4", "batch.target=16", "optim.lr=1e-2"], tokens=64 * 16 * 10)
    shutil.rmtree(run / "final")
    (run / "pretrain_config.json").write_text(json.dumps(old))
    with pytest.raises(CrammerError, match=r"different config \(optim\)"):
        pretrain(changed, corpus, run, resume=True)
