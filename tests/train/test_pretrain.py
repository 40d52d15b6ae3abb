import json
import re
import signal
import threading

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.model import make_config, training_flops_per_token
from crammer.train.checkpoint import list_checkpoints
from crammer.train.config import ScheduleConfig
from crammer.train.loop import Pretrainer, TrainingInterrupted, pretrain
from crammer.train.schedules import lr_multiplier
from crammer.train.setup import model_config_for
from tests.train.conftest import metrics, tiny


@pytest.mark.slow
def test_loss_falls_batch_ramps_lr_follows_the_triangle_and_final_loads(corpus, tmp_path):
    budget = 64 * 32 * 40
    final = pretrain(tiny(["batch.ramp=0.5"], tokens=budget), corpus, tmp_path / "run")
    records = metrics(tmp_path / "run")
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert first > 7.0 and last < first - 1.0
    assert {"tokens_per_s", "lr", "batch_size", "elapsed_s", "remaining_s", "grad_norm"} <= set(records[-1])

    for r in records:  # token mode: progress = tokens before the step / budget
        assert r["progress"] == pytest.approx((r["tokens"] - r["batch_size"] * 64) / budget)
    assert records[-1]["progress"] < 1.0 <= records[-1]["tokens"] / budget
    assert records[0]["batch_size"] == 8 and records[0]["progress"] == 0.0
    first_full = next(i for i, r in enumerate(records) if r["batch_size"] == 32)
    assert records[first_full]["progress"] >= 0.5 > records[first_full - 1]["progress"]
    triangle = lr_multiplier(ScheduleConfig())
    for r in records:
        assert r["lr"] == pytest.approx(2e-3 * triangle(r["progress"]))

    model = AutoModelForMaskedLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    encoded = tokenizer("the history of the city", return_tensors="pt")
    assert model(input_ids=encoded["input_ids"]).logits.shape[-1] == tokenizer.vocab_size
    info = json.loads((final / "pretraining.json").read_text())
    assert info["steps"] == records[-1]["step"] and info["config"]["model"] == "tiny"


def test_wall_clock_budget_ends_at_the_deadline(corpus, tmp_path):
    final = pretrain(tiny(seconds=4.0), corpus, tmp_path / "run")
    info = json.loads((final / "pretraining.json").read_text())
    records = metrics(tmp_path / "run")
    # the last step started before the deadline and ended after it: no budget left unused
    assert 0.9 < records[-1]["progress"] < 1.0 <= records[-1]["elapsed_s"] / 4.0
    assert info["elapsed_s"] >= 4.0 and records[-1]["remaining_s"] == 0.0
    triangle = lr_multiplier(ScheduleConfig())  # the lr follows the clock down towards 0 at the deadline
    assert all(r["lr"] == pytest.approx(2e-3 * triangle(r["progress"])) for r in records)


class HookedStep:
    """The trainer's own TrainStep with `before(batches)` run first: how a test injects time or a signal."""

    def __init__(self, step, before):
        self.step, self.before = step, before

    def __call__(self, batches, lr):
        self.before(batches)
        return self.step(batches, lr)

    def __getattr__(self, name):  # state_dict, scaler, ...
        return getattr(self.step, name)


class FakeClock:
    """A time source for the budget that moves only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_large_steps_are_trimmed_at_the_deadline(corpus, tmp_path):
    # A clock that advances 50 ms per micro-batch: 64 micro-batches per step from the start make each step
    # 3.2 s of a 10 s budget, so an untrimmed last step would end up to 3.2 s late.
    clock = FakeClock()
    trainer = Pretrainer(tiny(["batch.target=512", "batch.ramp=0"], seconds=10.0), corpus, tmp_path / "run",
                         now=clock)

    def slow(batches):
        clock.now += 0.05 * len(batches)

    trainer.train_step = HookedStep(trainer.train_step, slow)
    final = trainer.run()
    info = json.loads((final / "pretraining.json").read_text())
    accumulations = [r["accumulation"] for r in metrics(tmp_path / "run")]
    assert accumulations[:3] == [64, 64, 64] and accumulations[-1] < 64  # only the last step was cut
    assert 10.0 <= info["elapsed_s"] <= 10.0 + 0.05  # ended within one micro-batch of the deadline


def test_nan_guard_skips_rolls_back_then_recovers(corpus, tmp_path):
    cfg = tiny(["guard.max_nonfinite_in_a_row=3", "guard.max_rollbacks=1"], tokens=64 * 8 * 20)
    trainer = Pretrainer(cfg, corpus, tmp_path / "run")
    checkpoint = trainer.save_checkpoint()
    with torch.no_grad():  # a divergence: the weights go non-finite after the checkpoint
        trainer.model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
    final = trainer.run()
    records = metrics(tmp_path / "run")
    # steps 1-3 skipped, then the rollback; step 4 was already queued on the bad weights (results are
    # read one step late), so it is skipped too; from step 5 on training is healthy again.
    assert [r["nonfinite_total"] for r in records[:6]] == [1, 2, 3, 4, 4, 4]
    assert [r["rollbacks"] for r in records[:3]] == [0, 0, 1]
    assert all(r["loss"] is None for r in records[:4])
    assert all(r["loss"] is not None and r["loss"] < 20 for r in records[4:])
    assert checkpoint.is_dir()
    assert torch.isfinite(AutoModelForMaskedLM.from_pretrained(final).bert.embeddings.word_embeddings.weight).all()


def test_nan_guard_stops_with_a_clear_message(corpus, tmp_path):
    cfg = tiny(["guard.max_nonfinite_in_a_row=2", "guard.max_rollbacks=0"], tokens=64 * 8 * 20)
    trainer = Pretrainer(cfg, corpus, tmp_path / "run")
    with torch.no_grad():
        trainer.model.bert.embeddings.word_embeddings.weight.fill_(float("inf"))
    with pytest.raises(CrammerError, match="not finite for 2 steps in a row at step 2"):
        trainer.run()
    with pytest.raises(CrammerError, match="no checkpoint to roll back to"):
        cfg = tiny(["guard.max_nonfinite_in_a_row=2"], tokens=64 * 8 * 20)
        trainer = Pretrainer(cfg, corpus, tmp_path / "run2")
        with torch.no_grad():
            trainer.model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
        trainer.run()


def test_cli_pretrain_plot_and_errors(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(corpus), "--out", str(run), "--preset", "tiny",
                 "--budget-tokens", "20000", "--micro-batch", "4", "logging.every_steps=2"]) == 0
    records = metrics(run)
    assert records[0]["micro_batch"] == 4 and all(r["step"] % 2 == 0 for r in records)
    assert main(["plot", str(run)]) == 0
    for name in ("loss", "lr", "batch_size", "throughput"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # a second run into the same folder must not clobber it
    assert main(["pretrain", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--budget", "5s"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "x"), "--budget", "soon"]) == 2
    assert "bad duration 'soon'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "y"), "--budget", "5s"]) == 2
    assert "not a prepared corpus" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "z"), "--preset", "crammed-bert",
                 "--budget", "5s"]) == 2
    assert "batch.micro_batch must be set" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics yet" in capsys.readouterr().err


def test_optional_loggers_are_real_or_a_clear_error(corpus, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(CrammerError, match="needs TensorBoard"):
            pretrain(tiny(["logging.tensorboard=true"]), corpus, tmp_path / "run")
    else:
        pretrain(tiny(["logging.tensorboard=true"]), corpus, tmp_path / "run")
        assert list((tmp_path / "run" / "tensorboard").iterdir())
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(CrammerError, match="needs Weights & Biases"):
            pretrain(tiny(["logging.wandb=true"]), corpus, tmp_path / "run-wandb")


def test_a_failed_setup_leaves_no_prefetch_thread(corpus, tmp_path):
    """A logger that cannot start (W&B asked for, not installed) fails the set-up before the data stream's
    thread starts, so no thread is left behind."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed: its logger starts")
    with pytest.raises(CrammerError, match="needs Weights & Biases"):
        Pretrainer(tiny(["logging.wandb=true"]), corpus, tmp_path / "run")
    assert not [t for t in threading.enumerate() if t.name == "crammer-loader" and t.is_alive()]


def test_a_corpus_longer_than_the_model_positions_fails_before_set_up(corpus, tmp_path, capsys):
    """The 64-token corpus and a 32-position model: one line naming the folder and the override, and
    nothing written, instead of a ValueError from inside the first forward pass."""
    expected = (f"{corpus}: corpus seq_len=64 exceeds the max_position_embeddings=32 of the 'tiny' model; "
                "pass model.max_position_embeddings=64 or use sequences of at most 32 tokens")
    with pytest.raises(CrammerError, match=re.escape(expected)):
        Pretrainer(tiny(["model.max_position_embeddings=32"]), corpus, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--budget", "5s", "model.max_position_embeddings=32"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    model_config_for(tiny(["model.max_position_embeddings=64"]), 2000, 64, "corpus seq_len")  # exactly fits


def test_gradscaler_back_offs_do_not_trip_the_nan_guard(corpus, tmp_path):
    """fp16 with an initial loss scale far too large: GradScaler backs off for several steps with finite
    losses; the guard (2 in a row, no rollback) must let it."""
    cfg = tiny(["precision=fp16", "batch.target=8", "guard.max_nonfinite_in_a_row=2", "guard.max_rollbacks=0"],
               tokens=64 * 8 * 20)
    trainer = Pretrainer(cfg, corpus, tmp_path / "run")
    trainer.train_step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    trainer.run()
    records = metrics(tmp_path / "run")
    assert records[0]["grad_norm"] is None and records[-1]["grad_norm"] is not None  # backed off, then found a scale
    assert all(r["nonfinite_total"] == 0 and r["loss"] is not None for r in records)


def test_resuming_a_finished_run_leaves_it_alone(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--budget-tokens", "5120"]
    assert main(args) == 0
    summary = (run / "final" / "pretraining.json").read_text()
    weights = (run / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run / "final") and err == f"cram: {run} already finished; the final model is in {run / 'final'}\n"
    assert (run / "final" / "pretraining.json").read_text() == summary
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == weights
    assert main([*args, "--resume", "optim.lr=1e-2"]) == 2  # a different recipe is still refused
    assert "different config (optim)" in capsys.readouterr().err


def test_time_based_checkpoints_follow_the_clock_but_skip_the_deadline(corpus, tmp_path):
    """checkpoint.every_seconds=5 on a 10 s budget, one second per step: a checkpoint after step 5; the one
    falling due at the deadline is not written, since final/ is saved right after it."""
    clock = FakeClock()
    cfg = tiny(["batch.target=8", "checkpoint.every_seconds=5", "checkpoint.keep=10"], seconds=10.0)
    trainer = Pretrainer(cfg, corpus, tmp_path / "run", now=clock)

    def one_second(batches):
        clock.now += 1.0

    trainer.train_step = HookedStep(trainer.train_step, one_second)
    final = trainer.run()
    assert json.loads((final / "pretraining.json").read_text())["steps"] == 10
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000005"]


def test_peak_tflops_gives_mfu_without_a_gpu(corpus, tmp_path):
    pretrain(tiny(["logging.peak_tflops=0.5"], tokens=64 * 8 * 4), corpus, tmp_path / "run")
    records = metrics(tmp_path / "run")
    flops_per_token = training_flops_per_token(make_config("tiny", 2000), 64, 0.25)
    assert records and all(r["mfu"] > 0 for r in records)
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token / 0.5e12)


def test_a_signal_on_a_checkpoint_step_writes_the_stop_checkpoint_once(corpus, tmp_path):
    trainer = Pretrainer(tiny(["batch.target=8", "checkpoint.every_steps=3"]), corpus, tmp_path / "run")

    def signalled_during_step_3(batches):
        if trainer.state.step == 2:
            trainer.signal_received = signal.SIGTERM

    trainer.train_step = HookedStep(trainer.train_step, signalled_during_step_3)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 3"):
        trainer.run()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]
    assert not (tmp_path / "run" / "final").exists()


def test_a_model_vocabulary_smaller_than_the_corpus_and_an_infinite_lr_are_refused_before_any_work(corpus, tmp_path,
                                                                                                capsys):
    base = ["pretrain", "--data", str(corpus), "--preset", "tiny", "--budget-tokens", "5120"]
    assert main([*base, "--out", str(tmp_path / "small-vocab"), "model.vocab_size=100"]) == 2
    err = capsys.readouterr().err
    assert "model.vocab_size=100 is smaller than the data's vocabulary of 2000 tokens" in err and err.count("\n") == 1
    assert not (tmp_path / "small-vocab" / "pretrain_config.json").exists()
    assert main([*base, "--out", str(tmp_path / "inf"), "optim.lr=inf"]) == 2
    assert "optim.lr=inf is out of range" in capsys.readouterr().err
    assert not (tmp_path / "inf").exists()
    assert main([*base, "--out", str(tmp_path / "inf"), "optim.lr=1e-3"]) == 0  # the corrected command runs


def test_every_run_says_what_it_trains_and_what_came_after_the_budget(corpus, tmp_path, capsys):
    final = pretrain(tiny(["batch.target=8"], seconds=4.0), corpus, tmp_path / "run")
    err = capsys.readouterr().err
    assert "cram: model 'tiny': 2 layers x 128 hidden x 2 heads, " in err and " parameters" in err
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["training_s"] >= 4.0 and summary["final_validation_s"] > 0 and summary["saving_s"] > 0
    assert summary["elapsed_s"] == pytest.approx(summary["training_s"] + summary["final_validation_s"]
                                                 + summary["saving_s"])
    assert f"then final validation {summary['final_validation_s']:.1f}s, saving" in err
