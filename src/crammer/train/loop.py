"""The budgeted pretraining loop: `pretrain(config, data_dir, out_dir) -> RUN_DIR/final`.

Each optimizer step:
1. progress p in [0, 1] of the budget (wall clock, or tokens in token-count mode) gives the lr and
   the number of accumulated micro-batches (the batch-size ramp);
2. `TrainStep` runs the micro-batches and the update (a non-finite step is skipped on the device);
3. the step's loss / non-finite flag (all-reduced under DDP) are copied to the host asynchronously
   and read one step later, so the GPU never waits for the Python loop;
4. checkpoints (time- or step-based), metrics, and the stop check, which reads only the host clock.
Under DDP, rank 0's clock and any rank's stop request travel in that same packet, so every rank
takes the same lr, batch size and stopping step.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from crammer.config import config_hash, to_dict
from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_write_json, read_json
from crammer.model import count_parameters, training_flops_per_token
from crammer.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from crammer.train.config import PretrainConfig
from crammer.train.loader import BatchStream
from crammer.train.masking import MLMCollator
from crammer.train.metrics import GpuMonitor, MetricsLog, peak_flops, status_line
from crammer.train.schedules import accumulation_steps, lr_multiplier
from crammer.train.step import (
    TrainStep,
    auto_micro_batch,
    build_model_and_optimizer,
    check_corpus_fits_model,
    configure_backends,
    resolve_precision,
    should_compile,
)

CONFIG_FILE = "pretrain_config.json"
FINAL_DIR = "final"
SUMMARY_FILE = "pretraining.json"  # written last into final/: its presence means the run finished
# Sections that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"checkpoint", "logging", "data"}


class TrainingInterrupted(CrammerError):
    """SIGTERM/SIGINT: a checkpoint was written; `--resume` continues."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @classmethod
    def from_env(cls) -> "Distributed":
        """Single process, or the `torchrun` environment (nccl on GPU, gloo on CPU)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world_size == 1:
            return cls(device=device)
        here = not dist.is_initialized()
        if here:
            dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
        return cls(dist.get_rank(), dist.get_world_size(), device, here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class NonFiniteGuard:
    """Skip each non-finite step; after `max_in_a_row` in a row roll back (at most `max_rollbacks`
    times), then give up."""

    def __init__(self, max_in_a_row: int, max_rollbacks: int, total: int = 0, rollbacks: int = 0):
        self.max_in_a_row = max_in_a_row
        self.max_rollbacks = max_rollbacks
        self.in_a_row = 0
        self.total = total
        self.rollbacks = rollbacks

    def update(self, nonfinite: bool) -> str:
        """'ok', 'skip' (update skipped), 'rollback' or 'stop'."""
        if not nonfinite:
            self.in_a_row = 0
            return "ok"
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row < self.max_in_a_row:
            return "skip"
        self.in_a_row = 0
        if self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            return "rollback"
        return "stop"


@dataclass
class PendingStep:
    """A queued step whose results are on their way to the host."""

    packet: torch.Tensor  # host tensor: loss, nonfinite, rank 0 elapsed, stop votes, grad norm
    event: torch.cuda.Event | None
    step: int
    tokens: int
    progress: float  # budget progress at the start of the step (what set its lr and batch size)
    lr: float
    accumulation: int
    queued_at: float  # host time when the step was queued (~ when the previous one finished on a GPU)


class Pretrainer:
    """Owns the model, optimizer, data stream and budget clock of one run (one rank under DDP)."""

    def __init__(self, cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False):
        self.start_time = time.monotonic()  # start-up and compilation count against the budget
        self.cfg = cfg.validate()
        self.run_dir = Path(out_dir)
        self.dist = Distributed.from_env()
        self.device = self.dist.device
        self.corpus = PackedCorpus(data_dir)
        check_corpus_fits_model(cfg, self.corpus)
        self.checkpoint_path = self._check_run_dir(resume)

        configure_backends(cfg.tf32)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model, self.optimizer = build_model_and_optimizer(cfg, self.corpus.vocab_size, self.device)
        self.collator = MLMCollator(cfg.masking, self.corpus.vocab_size, self.corpus.special_tokens)

        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "position": 0, "elapsed": 0.0,
                                      "nonfinite_total": 0, "rollbacks": 0}
        trainer_state: dict[str, Any] = {}
        if self.checkpoint_path:
            saved, trainer_state = load_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.device)
            self.state.update({k: saved[k] for k in self.state})
            saved_micro_batch = saved["micro_batch"]
            if saved["world_size"] * saved_micro_batch % self.dist.world_size:
                raise CrammerError(f"{self.checkpoint_path}: global micro-batch {saved['world_size']}x"
                                   f"{saved_micro_batch} cannot be split over {self.dist.world_size} ranks")
            self.micro_batch = saved["world_size"] * saved_micro_batch // self.dist.world_size
            set_rng_state(trainer_state.pop("rng"))
        else:
            self.micro_batch = self._choose_micro_batch()

        self.train_model: torch.nn.Module = self.model
        if should_compile(cfg.compile, self.device):
            self.model.compile()  # in place: parameter names and state_dict keys stay unchanged
        if self.dist.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.train_step = TrainStep(self.train_model, self.optimizer, cfg.optim, self.precision, self.device)
        self.train_step.load_state_dict(trainer_state)

        self.guard = NonFiniteGuard(cfg.guard.max_nonfinite_in_a_row, cfg.guard.max_rollbacks,
                                    self.state["nonfinite_total"], self.state["rollbacks"])
        self.lr_at = lr_multiplier(cfg.schedule)
        self.stream = BatchStream(
            self.corpus, self.collator, self.micro_batch, order=cfg.data.order, seed=cfg.seed,
            position=self.state["position"], rank=self.dist.rank, world_size=self.dist.world_size,
            prefetch=cfg.data.prefetch, pin_memory=self.device.type == "cuda",
        )
        try:  # the stream's prefetch thread is running now: stop it if the rest of the set-up fails
            self.metrics = MetricsLog(self.run_dir, cfg.logging, self.dist.is_main, to_dict(cfg))
            self.metrics.truncate_after(self.state["step"])
            self.gpu = GpuMonitor(self.device)
            self.flops_per_token = training_flops_per_token(self.model.config, self.corpus.seq_len,
                                                            cfg.masking.fraction)
            self.peak_flops = peak_flops(self.device, cfg.logging.peak_tflops)
        except BaseException:
            self.stream.close()
            raise
        self.shared_elapsed = self.state["elapsed"]
        self.signal_received: int | None = None  # this process was signalled
        self.agreed_signal: int | None = None  # some rank was signalled, as seen by all ranks

    # ----------------------------------------------------------------------------------- set-up
    def _check_run_dir(self, resume: bool) -> Path | None:
        """Write the run's config; on resume return the checkpoint to continue from."""
        config_path = self.run_dir / CONFIG_FILE
        checkpoint = latest_checkpoint(self.run_dir)
        if not resume:
            if checkpoint or (self.run_dir / FINAL_DIR).exists():
                raise CrammerError(f"{self.run_dir} already holds a run; pass --resume or choose another --out")
        else:
            check_same_recipe(self.run_dir, self.cfg)
        if self.dist.is_main:
            atomic_write_json(config_path, {**to_dict(self.cfg), "config_hash": config_hash(self.cfg)})
        if resume and checkpoint is None and self.dist.is_main:
            print(f"cram: no checkpoint in {self.run_dir}; starting from scratch", file=sys.stderr)
        return checkpoint if resume else None

    def _choose_micro_batch(self) -> int:
        if self.cfg.batch.micro_batch:
            return self.cfg.batch.micro_batch
        if self.device.type != "cuda":
            raise CrammerError("batch.micro_batch must be set when training without a GPU (auto-sizing needs CUDA)")
        target = max(1, self.cfg.batch.target // self.dist.world_size)
        micro_batch = auto_micro_batch(self.model, self.collator, self.corpus.seq_len, self.precision,
                                       self.cfg.batch.memory_fraction, target)
        torch.cuda.reset_peak_memory_stats(self.device)  # logged peaks are training's, not the sizing probe's
        if self.dist.world_size > 1:  # every rank must use the same size: take the smallest
            size = torch.tensor([micro_batch], device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MIN)
            micro_batch = int(size.item())
        if self.dist.is_main:
            print(f"cram: micro-batch {micro_batch} (fits {self.cfg.batch.memory_fraction:.0%} of GPU memory; "
                  f"divides the {self.cfg.batch.target}-sequence batch evenly)", file=sys.stderr)
        return micro_batch

    # ----------------------------------------------------------------------------------- clock
    def elapsed(self) -> float:
        """Budget seconds used so far, including earlier runs of a resumed job."""
        return self.state["elapsed"] + time.monotonic() - self.start_time

    def clock(self) -> float:
        """The elapsed budget every rank agrees on: under DDP rank 0's, one step old."""
        return self.elapsed() if self.dist.world_size == 1 else self.shared_elapsed

    def progress(self) -> float:
        if self.cfg.budget_tokens is not None:
            return self.state["tokens"] / self.cfg.budget_tokens
        return self.clock() / self.cfg.budget_seconds

    def budget_spent(self) -> bool:
        return self.progress() >= 1.0

    # ----------------------------------------------------------------------------------- loop
    def run(self) -> Path:
        handlers = self._install_signal_handlers()
        self.bar = bar = tqdm(total=100, bar_format="{percentage:3.0f}% |{bar:20}| {desc}",
                              disable=not self.dist.is_main, file=sys.stderr)
        self.last_log = (time.monotonic(), self.state["tokens"])
        self.last_checkpoint_clock = self.clock()
        self.window: list[float] = []
        self.last_step_start: float | None = None
        self.last_accumulation = 1
        self.micro_batch_seconds: float | None = None
        pending: PendingStep | None = None
        try:
            while not self._ending():
                pending_now = self._one_step()
                if pending is not None:
                    self._finish(pending)
                pending = pending_now
                if self._checkpoint_due():
                    self._finish(pending)
                    pending = None
                    if not self._ending():  # else final/ or the stop checkpoint is written next anyway
                        self.save_checkpoint()
            if pending is not None:
                self._finish(pending)
            if self._stop_requested():
                path = self.save_checkpoint()
                signum = self.signal_received or self.agreed_signal
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(signum).name} at step {self.state['step']}; checkpoint "
                    f"{path}; continue with --resume", signum)
            return self.save_final()
        finally:
            bar.close()
            self.stream.close()
            self.metrics.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if self.dist.initialized_here:
                dist.destroy_process_group()

    def _accumulation(self, progress: float) -> int:
        """Micro-batches in this step: the batch ramp's, trimmed near a wall-clock deadline so the run ends
        at most about one micro-batch late (a full step can take many seconds on a small GPU or a CPU).

        Seconds per micro-batch come from the agreed clock between step starts (the same on every rank),
        skipping the first steps, which include compilation.
        """
        accumulation = accumulation_steps(progress, self.cfg.batch, self.micro_batch, self.dist.world_size)
        now = self.clock()
        if self.last_step_start is not None and self.state["step"] > 2:
            self.micro_batch_seconds = (now - self.last_step_start) / self.last_accumulation
        if self.cfg.budget_seconds is not None and self.micro_batch_seconds:
            left = self.cfg.budget_seconds - now
            accumulation = max(1, min(accumulation, math.ceil(left / self.micro_batch_seconds)))
        self.last_step_start, self.last_accumulation = now, accumulation
        return accumulation

    def _one_step(self) -> PendingStep:
        progress = self.progress()
        lr = self.cfg.optim.lr * self.lr_at(progress)
        accumulation = self._accumulation(progress)
        non_blocking = self.device.type == "cuda"
        batches = [next(self.stream).to(self.device, non_blocking=non_blocking) for _ in range(accumulation)]
        out = self.train_step(batches, lr)
        self.state["step"] += 1
        self.state["tokens"] += accumulation * self.micro_batch * self.dist.world_size * self.corpus.seq_len
        self.state["position"] = self.stream.position

        # loss, nonfinite, rank 0's clock, stop votes, grad norm: one small tensor, one all-reduce.
        host_values = torch.tensor([self.elapsed() if self.dist.is_main else 0.0,
                                    1.0 if self.signal_received else 0.0])
        packet = torch.cat([out.loss.reshape(1), out.nonfinite.float().reshape(1),
                            host_values.to(self.device, non_blocking=non_blocking), out.grad_norm.float().reshape(1)])
        if self.dist.world_size > 1:
            dist.all_reduce(packet)
        host = torch.empty(packet.shape, pin_memory=non_blocking)
        host.copy_(packet, non_blocking=non_blocking)
        event = None
        if non_blocking:
            event = torch.cuda.Event()
            event.record()
        return PendingStep(host, event, self.state["step"], self.state["tokens"], progress, lr, accumulation,
                           time.monotonic())

    def _finish(self, pending: PendingStep) -> None:
        """Read a step's results (waiting only for that step), apply the guard, log."""
        if pending.event is not None:
            pending.event.synchronize()
        loss_sum, nonfinite, elapsed, votes, grad_norm_sum = pending.packet.tolist()
        world = self.dist.world_size
        grad_norm = grad_norm_sum / world  # every rank holds the same global norm
        self.shared_elapsed = elapsed
        if votes > 0:
            self.agreed_signal = self.signal_received or signal.SIGTERM
        action = self.guard.update(nonfinite > 0)
        self.state["nonfinite_total"], self.state["rollbacks"] = self.guard.total, self.guard.rollbacks
        if action == "rollback":
            self._roll_back(pending.step)
        elif action == "stop":
            raise CrammerError(
                f"loss or gradients not finite for {self.cfg.guard.max_nonfinite_in_a_row} steps in a row at step "
                f"{pending.step} after {self.guard.rollbacks} rollback(s); lower optim.lr or check the data")
        if action == "ok":
            self.window.append(loss_sum / world)
        if pending.step % self.cfg.logging.every_steps == 0:
            self._log(pending, grad_norm)

    def _roll_back(self, step: int) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise CrammerError(f"loss not finite for {self.cfg.guard.max_nonfinite_in_a_row} steps in a row at "
                               f"step {step} and no checkpoint to roll back to; lower optim.lr or check the data")
        load_checkpoint(path, self.model, self.optimizer, self.device)
        if self.dist.is_main:
            print(f"cram: non-finite loss at step {step}: rolled back weights and optimizer to {path}; "
                  "the data position moves on", file=sys.stderr)

    def _log(self, pending: PendingStep, grad_norm: float) -> None:
        tokens_per_s = (pending.tokens - self.last_log[1]) / max(pending.queued_at - self.last_log[0], 1e-9)
        self.last_log = (pending.queued_at, pending.tokens)
        elapsed = self.elapsed()
        if self.cfg.budget_tokens is not None:
            remaining = (self.cfg.budget_tokens - pending.tokens) / tokens_per_s if tokens_per_s > 0 else None
        else:
            remaining = max(self.cfg.budget_seconds - elapsed, 0.0)
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.dist.world_size)
        record = {
            "step": pending.step,
            "tokens": pending.tokens,
            "progress": pending.progress,
            "elapsed_s": elapsed,
            "remaining_s": remaining,
            "loss": sum(self.window) / len(self.window) if self.window else None,
            "lr": pending.lr,
            "batch_size": pending.accumulation * self.micro_batch * self.dist.world_size,
            "micro_batch": self.micro_batch,
            "accumulation": pending.accumulation,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "nonfinite_total": self.guard.total,
            "rollbacks": self.guard.rollbacks,
            **self.gpu.sample(),
        }
        if self.device.type == "cuda":
            record["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.window = []
        self.metrics.write(record)
        self.bar.n = round(100 * min(self.progress(), 1.0), 1)
        self.bar.set_description_str(status_line(record))

    # ----------------------------------------------------------------------------------- stopping
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT finish the current step, checkpoint and exit (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            self.signal_received = signum

        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _stop_requested(self) -> bool:
        # Under DDP a signal counts once it has travelled through a step packet, so all ranks agree.
        return (self.signal_received if self.dist.world_size == 1 else self.agreed_signal) is not None

    def _ending(self) -> bool:
        return self.budget_spent() or self._stop_requested()

    def _checkpoint_due(self) -> bool:
        ck = self.cfg.checkpoint
        if ck.every_steps and self.state["step"] % ck.every_steps == 0:
            return True
        return bool(ck.every_seconds) and self.clock() - self.last_checkpoint_clock >= ck.every_seconds

    # ----------------------------------------------------------------------------------- saving
    def save_checkpoint(self) -> Path:
        self.last_checkpoint_clock = self.clock()
        path = self.run_dir / "checkpoints" / f"step-{self.state['step']:08d}"
        if self.dist.is_main:
            state = {**self.state, "elapsed": self.elapsed(), "micro_batch": self.micro_batch,
                     "world_size": self.dist.world_size, "config_hash": config_hash(self.cfg)}
            path = save_checkpoint(self.run_dir, self.state["step"], self.model, self.optimizer,
                                   self.train_step.state_dict(), state, self.cfg.checkpoint.keep)
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    def save_final(self) -> Path:
        """RUN_DIR/final: a Hugging Face folder (model + tokenizer + how it was trained)."""
        final = self.run_dir / FINAL_DIR
        if self.dist.is_main:
            with atomic_dir(final) as tmp:
                self.model.save_pretrained(tmp, tokenizer=self.corpus.tokenizer())
                atomic_write_json(tmp / SUMMARY_FILE, {
                    "steps": self.state["step"], "tokens": self.state["tokens"], "elapsed_s": self.elapsed(),
                    "nonfinite_steps": self.guard.total, "rollbacks": self.guard.rollbacks,
                    "parameters": count_parameters(self.model), "micro_batch": self.micro_batch,
                    "world_size": self.dist.world_size, "precision": self.precision,
                    "data": str(self.corpus.path), "config": to_dict(self.cfg),
                })
            print(f"cram: pretrained {self.state['step']} steps, {self.state['tokens']:,} tokens in "
                  f"{self.elapsed():.0f}s -> {final}", file=sys.stderr)
        if self.dist.world_size > 1:
            dist.barrier()
        return final


def check_same_recipe(run_dir: Path, cfg: PretrainConfig) -> None:
    """--resume may change only RESUMABLE_CHANGES: anything else would make a different run."""
    config_path = Path(run_dir) / CONFIG_FILE
    if not config_path.is_file():
        return
    saved = read_json(config_path)
    current = to_dict(cfg)
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise CrammerError(f"{config_path}: --resume with a different config ({', '.join(changed)}); "
                           "use the original settings or a new --out")


def pretrain(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False) -> Path:
    """Pretrain within the budget; return RUN_DIR/final. Raises TrainingInterrupted on SIGTERM/SIGINT.

    Resuming a finished run returns its final/ untouched: training again would overwrite it.
    """
    final = Path(out_dir) / FINAL_DIR
    if resume and (final / SUMMARY_FILE).is_file():
        check_same_recipe(Path(out_dir), cfg.validate())
        if os.environ.get("RANK", "0") == "0":
            print(f"cram: {out_dir} already finished; the final model is in {final}", file=sys.stderr)
        return final
    return Pretrainer(cfg, data_dir, out_dir, resume).run()

