"""The budgeted pretraining loop: `pretrain(config, data_dir, out_dir) -> RUN_DIR/final`.

Each optimizer step:
1. progress p in [0, 1] of the budget (wall clock, or tokens in token-count mode) gives the lr and
   the number of accumulated micro-batches (the batch-size ramp);
2. `_launch` queues the step on the device (`TrainStep`: a non-finite step is skipped there) and starts
   copying its loss / non-finite flag (all-reduced under DDP) to the host;
3. `_collect` reads those results one step later, so the GPU never waits for the Python loop, and
   applies the NaN guard and logging;
4. checkpoints (time- or step-based) and the stop check, which reads only the host clock.
Under DDP, rank 0's clock and any rank's stop request travel in that same packet, so every rank
takes the same lr, batch size and stopping step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from crammer.config import config_hash, to_dict
from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.hub.card import facts_from_run_files, write_model_card
from crammer.io import atomic_dir, atomic_write_json, exclusive_folder, read_json
from crammer.model import count_parameters, training_flops_per_token
from crammer.progress import no_transformers_bars
from crammer.train.checkpoint import (checkpoint_path, file_digest, latest_checkpoint, list_checkpoints,
                                      load_latest, save_checkpoint, set_rng_state)
from crammer.train.config import PretrainConfig
from crammer.train.distributed import Distributed
from crammer.train.files import CONFIG_FILE, FINAL_DIR, SUMMARY_FILE
from crammer.train.guard import NonFiniteGuard
from crammer.train.loader import BatchStream
from crammer.train.logger import StepLogger
from crammer.train.schedules import accumulation_steps, lr_multiplier
from crammer.train.setup import build_training, model_config_for
from crammer.train.state import Budget, BudgetClock, LaunchedStep, TrainState
from crammer.train.validation import ValidationResult, Validator, tokens_per_character, validation_batches

# Sections that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"checkpoint", "logging", "data", "eval"}


class TrainingInterrupted(CrammerError):
    """SIGTERM/SIGINT: a checkpoint was written; `--resume` continues."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Pretrainer:
    """One run (one rank under DDP): set up in `__init__`, trained by `run`.

    `now` is the clock the budget is measured with (a fake one in tests).
    """

    def __init__(self, cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
                 now: Callable[[], float] = time.monotonic):
        self.clock = BudgetClock(now)  # start-up and compilation count against the budget
        self.cfg = cfg.validate()
        self.budget = Budget(cfg.budget_seconds, cfg.budget_tokens)
        self.run_dir = Path(out_dir)
        self.dist = Distributed.from_env()
        self.device = self.dist.device
        self.corpus = PackedCorpus(data_dir)
        model_config = model_config_for(cfg, self.corpus.vocab_size, self.corpus.seq_len,
                                        f"{self.corpus.path}: corpus seq_len")
        resume = self._claim_run_dir(resume)
        self.corpus_record = corpus_record(self.corpus)

        training = build_training(cfg, model_config, self.corpus.special_tokens, self.device)
        self.model, self.optimizer, self.precision = training.model, training.optimizer, training.precision
        self.state = TrainState()
        step_state: dict[str, Any] = {}
        self.corpora = [{"from_step": 0, **self.corpus_record}]  # the corpora this run trained on, in order
        loaded = load_latest(self.run_dir, self.model, self.optimizer, self.device) if resume else None
        if loaded:
            checkpoint, saved, step_state = loaded
            self._check_same_corpus(checkpoint, saved)
            self.state.load_state_dict(saved)
            self.clock.spent_before = saved["elapsed"]
            self.micro_batch = self._rescaled_micro_batch(checkpoint, saved)
            set_rng_state(step_state.pop("rng"))
        else:
            target = max(1, cfg.batch.target // self.dist.world_size)
            self.micro_batch = self.dist.min_over_ranks(training.micro_batch(self.corpus.seq_len, target))
            if self.dist.is_main and not cfg.batch.micro_batch:
                print(f"cram: micro-batch {self.micro_batch} (fits {cfg.batch.memory_fraction:.0%} of GPU memory; "
                      f"divides the {cfg.batch.target}-sequence batch evenly)", file=sys.stderr)
        training.compile()
        self.train_model: torch.nn.Module = self.model
        if self.dist.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_step = training.step(self.train_model)
        self.train_step.load_state_dict(step_state)
        self.tokenizer = self.corpus.tokenizer()  # saved with every checkpoint and with final/
        self.validator = self._validator(training.collator.cfg)
        self.last_validation: ValidationResult | None = None

        self.guard = NonFiniteGuard(cfg.guard, self.state)
        self.lr_at = lr_multiplier(cfg.schedule)
        self.logger = StepLogger(
            self.run_dir, cfg.logging, self.dist.is_main, to_dict(cfg), self.device,
            training_flops_per_token(model_config, self.corpus.seq_len, cfg.masking.fraction),
            self.dist.world_size, self.budget)
        self.logger.resume_after(self.state.step)
        try:  # last: the stream starts a prefetch thread, and nothing after it can fail
            self.stream = BatchStream(
                self.corpus, training.collator, self.micro_batch, order=cfg.data.order, seed=cfg.seed,
                position=self.state.position, rank=self.dist.rank, world_size=self.dist.world_size,
                prefetch=cfg.data.prefetch, pin_memory=self.device.type == "cuda",
            )
        except BaseException:
            self.logger.close()
            raise
        self.shared_elapsed = self.clock.spent_before  # under DDP: rank 0's clock as of the last collected step
        self.signal_received: int | None = None  # this process was signalled
        self.agreed_signal: int | None = None  # some rank was signalled, as seen by all ranks
        self.last_checkpoint_clock = 0.0  # set when the run starts
        self.last_eval_clock = 0.0
        self.last_validation_seconds: float | None = None
        self.micro_batch_seconds: float | None = None  # measured between step starts, for the deadline
        self.last_step_start: tuple[float, int] | None = None  # (agreed clock, micro-batches) of the last step

    # ----------------------------------------------------------------------------------- the loop
    def run(self) -> Path:
        handlers = self._install_signal_handlers()
        self.logger.start(self.clock.now(), self.state.tokens)
        self.last_checkpoint_clock = self.last_eval_clock = self.agreed_elapsed()
        in_flight: LaunchedStep | None = None
        try:
            while not self._ending():
                launched = self._launch()  # step N runs on the device ...
                if in_flight is not None:
                    self._collect(in_flight)  # ... while the host reads step N-1's results
                in_flight = launched
                checkpoint, validation = self._checkpoint_due(), self._validation_due()
                if checkpoint or validation:
                    self._collect(in_flight)
                    in_flight = None
                    if not self._ending():  # else the final ones (or the stop checkpoint) come next anyway
                        if validation:
                            self.validate()
                        if checkpoint:
                            self.save_checkpoint()
            if in_flight is not None:
                self._collect(in_flight)
            if self._stop_requested():
                path = self.save_checkpoint()
                signum = self.signal_received or self.agreed_signal
                raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at step {self.state.step}; "
                                          f"checkpoint {path}; continue with --resume", signum)
            if self.validator is not None:
                self.validate()
            return self.save_final()
        finally:
            self.stream.close()
            self.logger.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self.dist.close()

    def _launch(self) -> LaunchedStep:
        """Queue one optimizer step and the asynchronous copy of its results to the host."""
        progress = self.progress()
        lr = self.cfg.optim.lr * self.lr_at(progress)
        accumulation = self._accumulation(progress)
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
        self.shared_elapsed = elapsed
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

    def _accumulation(self, progress: float) -> int:
        """Micro-batches in this step: the batch ramp's, trimmed near a wall-clock deadline so the run ends
        at most about one micro-batch late (a full step can take many seconds on a small GPU or a CPU).

        Seconds per micro-batch come from the agreed clock between step starts (the same on every rank),
        skipping the first steps, which include compilation.
        """
        accumulation = accumulation_steps(progress, self.cfg.batch, self.micro_batch, self.dist.world_size)
        now = self.agreed_elapsed()
        if self.last_step_start is not None and self.state.step > 2:
            started, micro_batches = self.last_step_start
            self.micro_batch_seconds = (now - started) / micro_batches
        if self.budget.seconds is not None and self.micro_batch_seconds:
            left = self.budget.seconds - now
            accumulation = max(1, min(accumulation, math.ceil(left / self.micro_batch_seconds)))
        self.last_step_start = (now, accumulation)
        return accumulation

    def _roll_back(self, step: int) -> None:
        loaded = load_latest(self.run_dir, self.model, self.optimizer, self.device)
        if loaded is None:
            raise CrammerError(f"loss not finite for {self.cfg.guard.max_nonfinite_in_a_row} steps in a row at "
                               f"step {step} and no checkpoint to roll back to; lower optim.lr or check the data")
        path = loaded[0]
        if self.dist.is_main:
            print(f"cram: non-finite loss at step {step}: rolled back weights and optimizer to {path}; "
                  "the data position moves on", file=sys.stderr)

    # ----------------------------------------------------------------------------------- validation
    def _validator(self, masking) -> Validator | None:
        """The fixed validation subset, or None (turned off, or a corpus without a validation split)."""
        if not self.cfg.eval.enabled:
            return None
        if not self.corpus.has_validation:
            if self.dist.is_main:
                print(f"cram: {self.corpus.path} has no validation split (prepared before it existed, or with "
                      "--validation-sequences 0): validation is skipped", file=sys.stderr)
            return None
        batches = validation_batches(self.corpus, masking, self.cfg.eval.sequences, self.micro_batch)
        return Validator(batches, self.device, self.precision, self.dist.rank, self.dist.world_size,
                         tokens_per_character(self.corpus))

    def _validation_due(self) -> bool:
        """every_steps, every_seconds, or (every_seconds=None) whenever one more evaluation keeps their share of
        the elapsed budget within max_share. Only agreed values decide, so all DDP ranks evaluate together."""
        ev = self.cfg.eval
        if self.validator is None:
            return False
        if ev.every_steps and self.state.step % ev.every_steps == 0:
            return True
        if ev.every_seconds is not None:
            return ev.every_seconds > 0 and self.agreed_elapsed() - self.last_eval_clock >= ev.every_seconds
        estimate = self._validation_estimate()
        return estimate is not None and self.state.eval_seconds + estimate <= ev.max_share * self.agreed_elapsed()

    def _validation_estimate(self) -> float | None:
        """Seconds the next evaluation will take: as long as the last one, or before any, a forward pass of the
        subset at half the measured cost per training micro-batch (forward and backward; on the safe side)."""
        if self.last_validation_seconds is not None:
            return self.last_validation_seconds
        if not self.micro_batch_seconds:
            return None
        return self.validator.batches_per_rank * self.micro_batch_seconds / 2

    def validate(self) -> ValidationResult:
        """Evaluate on the validation subset, count the time against the budget, log it."""
        started = self.clock.now()
        result = self.validator(self.model)
        seconds = self.dist.max_over_ranks(self.clock.now() - started)
        self.last_validation_seconds = seconds
        self.state.eval_seconds += seconds
        self.last_eval_clock = self.agreed_elapsed()
        self.last_validation = result
        self.logger.log_validation(self.state, result, self.clock.elapsed(), self.progress())
        return result

    # ----------------------------------------------------------------------------------- the budget
    def agreed_elapsed(self) -> float:
        """The elapsed budget every rank agrees on: under DDP rank 0's, one step old."""
        return self.clock.elapsed() if self.dist.world_size == 1 else self.shared_elapsed

    def progress(self) -> float:
        return self.budget.progress(self.agreed_elapsed(), self.state.tokens)

    def _stop_requested(self) -> bool:
        # Under DDP a signal counts once it has travelled through a step packet, so all ranks agree.
        return (self.signal_received if self.dist.world_size == 1 else self.agreed_signal) is not None

    def _ending(self) -> bool:
        return self.progress() >= 1.0 or self._stop_requested()

    def _checkpoint_due(self) -> bool:
        ck = self.cfg.checkpoint
        if ck.every_steps and self.state.step % ck.every_steps == 0:
            return True
        return bool(ck.every_seconds) and self.agreed_elapsed() - self.last_checkpoint_clock >= ck.every_seconds

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT finish the current step, checkpoint and exit (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            self.signal_received = signum

        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # ----------------------------------------------------------------------------------- set-up and saving
    def _claim_run_dir(self, resume: bool) -> bool:
        """Write the run's config; whether there are checkpoints to resume from."""
        checkpoints = list_checkpoints(self.run_dir)
        if not resume:
            if latest_checkpoint(self.run_dir) or (self.run_dir / FINAL_DIR).exists():
                raise CrammerError(f"{self.run_dir} already holds a run; pass --resume or choose another --out")
        else:
            check_same_recipe(self.run_dir, self.cfg)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / CONFIG_FILE, {**to_dict(self.cfg), "config_hash": config_hash(self.cfg)})
        if resume and not checkpoints and self.dist.is_main:
            print(f"cram: no checkpoint in {self.run_dir}; starting from scratch", file=sys.stderr)
        return resume and bool(checkpoints)

    def _check_same_corpus(self, checkpoint: Path, saved: dict[str, Any]) -> None:
        """Token ids must keep their meaning across a resume: the tokenizer and the block length must be the
        checkpoint's. Another corpus with the same tokenizer is allowed, and recorded."""
        before = saved.get("corpus")
        self.corpora = saved.get("corpora", self.corpora)
        if before is None:  # a checkpoint from before corpora were recorded: nothing to compare
            return
        for key, what in (("tokenizer_sha256", "tokenizer"), ("seq_len", "sequence length")):
            if before[key] != self.corpus_record[key]:
                raise CrammerError(f"{self.corpus.path}: its {what} differs from the one {checkpoint} was trained "
                                   f"with ({before['path']}); resume on a corpus prepared with the same tokenizer "
                                   "(--tokenizer) and --seq-len, or start a new run")
        if before["recipe"] != self.corpus_record["recipe"] or before["path"] != self.corpus_record["path"]:
            self.corpora = [*self.corpora, {"from_step": saved["step"], **self.corpus_record}]
            if self.dist.is_main:
                print(f"cram: resuming on another corpus with the same tokenizer: {self.corpus.path} "
                      f"(from step {saved['step']}; was {before['path']})", file=sys.stderr)

    def _rescaled_micro_batch(self, checkpoint: Path, saved: dict[str, Any]) -> int:
        """The checkpoint's global micro-batch split over this job's ranks (so the data stream continues)."""
        world = self.dist.world_size
        if saved["world_size"] * saved["micro_batch"] % world:
            raise CrammerError(f"{checkpoint}: global micro-batch {saved['world_size']}x{saved['micro_batch']} "
                               f"cannot be split over {world} ranks")
        return saved["world_size"] * saved["micro_batch"] // world

    def save_checkpoint(self) -> Path:
        self.last_checkpoint_clock = self.agreed_elapsed()
        path = checkpoint_path(self.run_dir, self.state.step)
        if self.dist.is_main:
            state = {**self.state.state_dict(), "elapsed": self.clock.elapsed(), "micro_batch": self.micro_batch,
                     "world_size": self.dist.world_size, "config_hash": config_hash(self.cfg),
                     "corpus": self.corpus_record, "corpora": self.corpora}
            path = save_checkpoint(self.run_dir, self.state.step, self.model, self.optimizer,
                                   self.train_step.state_dict(), state, self.cfg.checkpoint.keep,
                                   model_files=self._save_model_files)
        self.dist.barrier()
        return path

    def _save_model_files(self, folder: Path) -> None:
        """What makes a checkpoint folder a model folder too (a few KB): its config and the tokenizer."""
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def save_final(self) -> Path:
        """RUN_DIR/final: a Hugging Face folder (model + tokenizer + how it was trained)."""
        final = self.run_dir / FINAL_DIR
        if self.dist.is_main:
            with atomic_dir(final) as tmp, no_transformers_bars():
                self.model.save_pretrained(tmp, tokenizer=self.tokenizer)
                elapsed = self.clock.elapsed()
                validation = self.last_validation
                atomic_write_json(tmp / SUMMARY_FILE, {
                    "steps": self.state.step, "tokens": self.state.tokens, "elapsed_s": elapsed,
                    "nonfinite_steps": self.state.nonfinite_total, "rollbacks": self.state.rollbacks,
                    "parameters": count_parameters(self.model), "micro_batch": self.micro_batch,
                    "world_size": self.dist.world_size, "precision": self.precision,
                    "data": str(self.corpus.path), "corpora": self.corpora, "config": to_dict(self.cfg),
                    "validation": None if validation is None else dataclasses.asdict(validation),
                    "eval_seconds": self.state.eval_seconds, "eval_share": self.state.eval_seconds / max(elapsed, 1e-9),
                    "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
                })
                write_model_card(tmp, facts_from_run_files(tmp, self.corpus.path))  # GLUE adds its table later
            print(f"cram: pretrained {self.state.step} steps, {self.state.tokens:,} tokens in "
                  f"{self.clock.elapsed():.0f}s -> {final}", file=sys.stderr)
        self.dist.barrier()
        return final


def corpus_record(corpus: PackedCorpus) -> dict[str, Any]:
    """What a checkpoint remembers of the corpus it was trained on."""
    return {"path": str(corpus.path), "recipe": corpus.manifest.config_hash, "seq_len": corpus.seq_len,
            "tokenizer_sha256": file_digest(corpus.path / "tokenizer.json")}


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
    main_rank = os.environ.get("RANK", "0") == "0"
    # One writer per run folder: a second `cram pretrain` on it stops at once (under DDP rank 0 holds it).
    with exclusive_folder(out_dir, "run folder") if main_rank else contextlib.nullcontext():
        if resume and (final / SUMMARY_FILE).is_file():
            check_same_recipe(Path(out_dir), cfg.validate())
            if main_rank:
                print(f"cram: {out_dir} already finished; the final model is in {final}", file=sys.stderr)
            return final
        return Pretrainer(cfg, data_dir, out_dir, resume).run()
