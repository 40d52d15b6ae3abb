"""The budgeted pretraining loop: `pretrain(config, data_dir, out_dir) -> RUN_DIR/final`.

Each optimizer step:
1. progress p in [0, 1] of the budget (wall clock, or tokens in token-count mode) gives the lr and
   the number of accumulated micro-batches (the batch-size ramp);
2. `_launch` queues the step on the device (`TrainStep`: a non-finite step is skipped there) and starts
   copying its loss / non-finite flag (all-reduced under DDP) to the host;
3. `_collect` reads those results one step later, so the GPU never waits for the Python loop, and
   applies the NaN guard and logging;
4. checkpoints and validation when `Pacing` says they are due, and the stop check, which reads only the
   host clock.
Under DDP, rank 0's clock and any rank's stop request travel in that same packet, so every rank
takes the same lr, batch size and stopping step. What the loop runs is built by `crammer.train.setup.build_run`.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from crammer.config import config_hash, to_dict
from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_write_json
from crammer.model import count_parameters
from crammer.progress import no_transformers_bars
from crammer.runfiles import FINAL_DIR, SUMMARY_FILE
from crammer.train.checkpoint import checkpoint_path, load_latest, save_checkpoint
from crammer.train.config import PretrainConfig
from crammer.train.guard import NonFiniteGuard
from crammer.train.distributed import Distributed, shared_run_folder
from crammer.train.resume import Resume, check_same_recipe
from crammer.train.schedules import accumulation_steps, lr_multiplier
from crammer.train.setup import build_run
from crammer.train.state import BudgetClock, LaunchedStep
from crammer.train.validation import ValidationResult

# Writes a model card into a final/ folder (being written), given the corpus the model was trained on.
ModelCardWriter = Callable[[Path, Path], Any]


class TrainingInterrupted(CrammerError):
    """SIGTERM/SIGINT: a checkpoint was written; `--resume` continues."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Pretrainer:
    """One run (one rank under DDP): built by `build_run`, trained by `run`.

    `now` is the clock the budget is measured with (a fake one in tests); `model_card` writes final/'s model
    card (the caller's: training does not know how cards are written).
    """

    def __init__(self, cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: Resume = False,
                 now: Callable[[], float] = time.monotonic, model_card: ModelCardWriter | None = None):
        parts = build_run(cfg, data_dir, Path(out_dir), resume, BudgetClock(now))  # start-up counts too
        self.cfg, self.run_dir, self.dist, self.corpus = parts.cfg, parts.run_dir, parts.dist, parts.corpus
        self.model, self.optimizer = parts.training.model, parts.training.optimizer  # the plain module
        self.precision, self.device, self.tokenizer = parts.training.precision, parts.dist.device, parts.tokenizer
        self.state, self.micro_batch, self.corpora = parts.state, parts.micro_batch, parts.corpora
        self.train_step, self.validator, self.logger = parts.train_step, parts.validator, parts.logger
        self.pacing, self.clock, self.masking = parts.pacing, parts.pacing.clock, parts.masking
        self.stream = parts.stream
        self.init_from, self.fresh_start = parts.init_from, parts.fresh_start  # the starting model (`--init-from`)
        self.corpus_record = parts.corpus_record  # what each checkpoint remembers of the corpus
        self.model_card = model_card
        self.guard = NonFiniteGuard(self.cfg.guard, self.state)
        self.lr_at = lr_multiplier(self.cfg.schedule)
        self.last_validation: ValidationResult | None = None
        self.signal_received: int | None = None  # this process was signalled
        self.agreed_signal: int | None = None  # some rank was signalled, as seen by all ranks

    # ----------------------------------------------------------------------------------- the loop
    def run(self) -> Path:
        handlers = self._install_signal_handlers()
        self.logger.start(self.clock.now(), self.state.tokens)
        self.pacing.start()
        in_flight: LaunchedStep | None = None
        try:
            if self.init_from is not None and self.fresh_start and self.validator is not None:
                self.evaluate()  # step 0: the starting model's own loss, so the curve shows what training gained
            while not self._ending():
                launched = self._launch()  # step N runs on the device ...
                if in_flight is not None:
                    self._collect(in_flight)  # ... while the host reads step N-1's results
                in_flight = launched
                checkpoint, validation = self.pacing.checkpoint_due(self.state.step), self._evaluation_due()
                if checkpoint or validation:
                    self._collect(in_flight)
                    in_flight = None
                    if not self._ending():  # else the final ones (or the stop checkpoint) come next anyway
                        if validation:
                            self.evaluate()
                        if checkpoint:
                            self.save_checkpoint()
            if in_flight is not None:
                self._collect(in_flight)
            if self._stop_requested():
                path = self.save_checkpoint()
                signum = self.signal_received or self.agreed_signal
                raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at step {self.state.step}; "
                                          f"checkpoint {path}; continue with --resume", signum)
            training_s, started = self.clock.elapsed(), self.clock.now()  # then the end-of-budget work
            if self.validator is not None:
                self.evaluate()
            return self.save_final(training_s, self.clock.now() - started)
        finally:
            self.stream.close()
            self.logger.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self.dist.close()

    def _launch(self) -> LaunchedStep:
        """Queue one optimizer step and the asynchronous copy of its results to the host."""
        progress = self.progress()
        self.masking.observe(progress)  # a wall-clock masking schedule follows the budget
        lr = self.cfg.optim.lr * self.lr_at(progress)
        ramp = accumulation_steps(progress, self.cfg.batch, self.micro_batch, self.dist.world_size)
        accumulation = self.pacing.micro_batches(ramp, self.state.step)
        non_blocking = self.device.type == "cuda"
        batches = [next(self.stream).to(self.device, non_blocking=non_blocking) for _ in range(accumulation)]
        out = self.train_step(batches, lr)
        batch_size = accumulation * self.micro_batch * self.dist.world_size
        self.state.step += 1
        self.state.tokens += batch_size * self.corpus.seq_len
        self.state.position = self.stream.position

        # loss, nonfinite, rank 0's clock, stop votes, grad norm: one small tensor, one all-reduce.
        host_values = torch.tensor([self.clock.elapsed() if self.dist.is_main else 0.0,
                                    1.0 if self.signal_received else 0.0])
        packet = torch.cat([out.loss.reshape(1), out.nonfinite.float().reshape(1),
                            host_values.to(self.device, non_blocking=non_blocking), out.grad_norm.float().reshape(1)])
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(packet)
        host = torch.empty(packet.shape, pin_memory=non_blocking)
        host.copy_(packet, non_blocking=non_blocking)
        event = None
        if non_blocking:
            event = torch.cuda.Event()
            event.record()
        return LaunchedStep(host, event, self.state.step, self.state.tokens, progress, lr, accumulation, batch_size,
                            self.clock.now())

    def _collect(self, launched: LaunchedStep) -> None:
        """Read a launched step's results (waiting only for that step), apply the guard, log."""
        if launched.event is not None:
            launched.event.synchronize()
        loss_sum, nonfinite, elapsed, votes, grad_norm_sum = launched.packet.tolist()
        world = self.dist.world_size
        self.pacing.shared_elapsed = elapsed
        if votes > 0:
            self.agreed_signal = self.signal_received or signal.SIGTERM
        action = self.guard.update(nonfinite > 0)
        if action == "rollback":
            self._roll_back(launched.step)
        elif action == "stop":
            raise CrammerError(
                f"loss or gradients not finite for {self.cfg.guard.max_nonfinite_in_a_row} steps in a row at step "
                f"{launched.step} after {self.state.rollbacks} rollback(s); lower optim.lr or check the data")
        elif action == "ok":
            self.logger.add_loss(loss_sum / world)
        if self.logger.due(launched.step):  # every rank holds the same global grad norm
            self.logger.log(launched, grad_norm_sum / world, self.clock.elapsed(), self.state, self.micro_batch,
                            self.progress())

    def _roll_back(self, step: int) -> None:
        loaded = load_latest(self.run_dir, self.model, self.optimizer, self.device)
        if loaded is None:
            raise CrammerError(f"loss not finite for {self.cfg.guard.max_nonfinite_in_a_row} steps in a row at "
                               f"step {step} and no checkpoint to roll back to; lower optim.lr or check the data")
        if self.dist.is_main:
            print(f"cram: non-finite loss at step {step}: rolled back weights and optimizer to {loaded[0]}; "
                  "the data position moves on", file=sys.stderr)

    # ----------------------------------------------------------------------------------- validation
    def _evaluation_due(self) -> bool:
        """Only agreed values decide, so all DDP ranks evaluate together."""
        return self.validator is not None and self.pacing.evaluation_due(
            self.state.step, self.state.eval_seconds, self.validator.batches_per_rank)

    def evaluate(self) -> ValidationResult:
        """Evaluate on the validation subset, count the time against the budget, log it."""
        started = self.clock.now()
        result = self.validator(self.model)
        seconds = self.dist.max_over_ranks(self.clock.now() - started)
        self.state.eval_seconds += seconds
        self.pacing.evaluated(seconds)
        self.last_validation = result
        self.logger.log_validation(self.state, result, self.clock.elapsed(), self.progress())
        return result

    # ----------------------------------------------------------------------------------- stopping
    def progress(self) -> float:
        return self.pacing.progress(self.state.tokens)

    def _stop_requested(self) -> bool:
        # Under DDP a signal counts once it has travelled through a step packet, so all ranks agree.
        return (self.signal_received if self.dist.world_size == 1 else self.agreed_signal) is not None

    def _ending(self) -> bool:
        return self.progress() >= 1.0 or self._stop_requested()

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT finish the current step, checkpoint and exit (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            self.signal_received = signum

        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # ----------------------------------------------------------------------------------- saving
    def save_checkpoint(self) -> Path:
        self.pacing.checkpointed()
        path = checkpoint_path(self.run_dir, self.state.step)
        if self.dist.is_main:
            state = {**self.state.state_dict(), "elapsed": self.clock.elapsed(), "micro_batch": self.micro_batch,
                     "world_size": self.dist.world_size, "config_hash": config_hash(self.cfg),
                     "corpus": self.corpus_record, "corpora": self.corpora, "init_from": self.init_from}
            path = save_checkpoint(self.run_dir, self.state.step, self.model, self.optimizer,
                                   self.train_step.state_dict(), state, self.cfg.checkpoint.keep,
                                   model_files=self._save_model_files)
        self.dist.barrier()
        return path

    def _save_model_files(self, folder: Path) -> None:
        """What makes a checkpoint folder a model folder too (a few KB): its config and the tokenizer."""
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def save_final(self, training_s: float | None = None, final_validation_s: float = 0.0) -> Path:
        """RUN_DIR/final: a Hugging Face folder (model + tokenizer + how it was trained). The final validation
        and the saving come after the budget (`training_s`, the clock when training stopped) and are reported
        apart, so a user sees why the wall clock passed the budget."""
        final = self.run_dir / FINAL_DIR
        if self.dist.is_main:
            with atomic_dir(final) as tmp, no_transformers_bars():
                self.model.save_pretrained(tmp, tokenizer=self.tokenizer)
                elapsed = self.clock.elapsed()
                training_s = elapsed if training_s is None else training_s
                validation = self.last_validation
                atomic_write_json(tmp / SUMMARY_FILE, {
                    "steps": self.state.step, "tokens": self.state.tokens, "elapsed_s": elapsed,
                    "training_s": training_s, "final_validation_s": final_validation_s,
                    "saving_s": elapsed - training_s - final_validation_s,
                    "nonfinite_steps": self.state.nonfinite_total, "rollbacks": self.state.rollbacks,
                    "parameters": count_parameters(self.model), "micro_batch": self.micro_batch,
                    "world_size": self.dist.world_size, "precision": self.precision,
                    "data": str(self.corpus.path), "corpora": self.corpora, "config": to_dict(self.cfg),
                    "init_from": self.init_from,
                    "validation": None if validation is None else dataclasses.asdict(validation),
                    "eval_seconds": self.state.eval_seconds, "eval_share": self.state.eval_seconds / max(elapsed, 1e-9),
                    "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
                })
                if self.model_card is not None:
                    self.model_card(tmp, self.corpus.path)  # inside final/'s staging folder: it appears complete
            saving_s = self.clock.elapsed() - training_s - final_validation_s
            print(f"cram: pretrained {self.state.step} steps, {self.state.tokens:,} tokens in {training_s:.0f}s; then "
                  f"final validation {final_validation_s:.1f}s, saving {saving_s:.1f}s -> {final}", file=sys.stderr)
        self.dist.barrier()
        return final


def pretrain(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: Resume = False,
             model_card: ModelCardWriter | None = None) -> Path:
    """Pretrain within the budget; return RUN_DIR/final. Raises TrainingInterrupted on SIGTERM/SIGINT.

    `resume`: False starts a new run (a folder holding one is refused); True or "auto" continue from the newest
    checkpoint if there is one and start otherwise, so the same command starts a run and continues it after
    `torchrun --max-restarts` restarts a group that lost a worker. Resuming a finished run
    returns its final/ untouched: training again would overwrite it. `model_card` writes final/README.md
    (`crammer.pipeline.pretrain` passes the Hugging Face card of `crammer.hub`).
    """
    final = Path(out_dir) / FINAL_DIR
    job = Distributed.from_env()
    try:
        # One writer per run folder, which every rank must see: a second `cram pretrain` on it stops at once.
        with shared_run_folder(out_dir, job):
            if resume and (final / SUMMARY_FILE).is_file():
                with job.together():
                    check_same_recipe(Path(out_dir), cfg.validate())
                if job.is_main:
                    print(f"cram: {out_dir} already finished; the final model is in {final}", file=sys.stderr)
                return final
            return Pretrainer(cfg, data_dir, out_dir, resume, model_card=model_card).run()
    finally:
        job.close()
