"""What a run carries from step to step and across `--resume`: the counters, the budget and its clock, and the
pacing that decides from that clock when each thing is due."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from crammer.train.config import CheckpointConfig, EvalConfig


@dataclass
class TrainState:
    """The counters a checkpoint saves and a resumed run continues from."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, all ranks together
    position: int = 0  # global micro-batches consumed from the data stream
    nonfinite_total: int = 0  # steps skipped for a non-finite loss
    rollbacks: int = 0  # returns to the last checkpoint after a streak of them
    eval_seconds: float = 0.0  # budget seconds spent on validation

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """From a checkpoint's state.json; a counter added later (eval_seconds) starts at 0 in an older one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, saved.get(f.name, f.default))


class BudgetClock:
    """Budget seconds spent: what earlier invocations of a resumed run spent, plus this one's since it
    started (start-up and compilation count). `now` is the time source, so tests can run a fake clock."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.started = now()
        self.spent_before = 0.0

    def elapsed(self) -> float:
        return self.spent_before + self.now() - self.started


@dataclass(frozen=True)
class Budget:
    """A wall-clock or a token budget (exactly one is set): how far along a run is, and what is left."""

    seconds: float | None
    tokens: int | None

    def progress(self, elapsed: float, tokens: int) -> float:
        """In [0, 1) while the budget lasts; >= 1 once it is spent."""
        return tokens / self.tokens if self.tokens is not None else elapsed / self.seconds

    def remaining_seconds(self, elapsed: float, tokens: int, tokens_per_s: float) -> float | None:
        if self.tokens is not None:
            return (self.tokens - tokens) / tokens_per_s if tokens_per_s > 0 else None
        return max(self.seconds - elapsed, 0.0)


class Pacing:
    """When things happen in a budgeted run, decided from the budget clock every rank agrees on (under DDP rank
    0's, which travels in each step's packet, one step old): the budget's progress, whether a checkpoint or an
    evaluation is due, and how many micro-batches still fit before a wall-clock deadline."""

    def __init__(self, budget: Budget, clock: BudgetClock, checkpoint: CheckpointConfig, evaluation: EvalConfig,
                 world_size: int = 1):
        self.budget, self.clock = budget, clock
        self.checkpoint, self.evaluation = checkpoint, evaluation
        self.world_size = world_size
        self.shared_elapsed = clock.spent_before  # rank 0's clock as of the last collected step (DDP)
        self.last_checkpoint = self.last_evaluation = 0.0  # agreed clock; set when the loop starts
        self.evaluation_seconds: float | None = None  # how long the last evaluation took
        self.micro_batch_seconds: float | None = None  # measured between step starts, for the deadline
        self.last_step_start: tuple[float, int] | None = None  # (agreed clock, micro-batches) of the last step

    def elapsed(self) -> float:
        """The elapsed budget every rank agrees on."""
        return self.clock.elapsed() if self.world_size == 1 else self.shared_elapsed

    def progress(self, tokens: int) -> float:
        return self.budget.progress(self.elapsed(), tokens)

    def start(self) -> None:
        """The loop starts: fixed intervals count from here; the evaluation share is earned from the budget's
        start (so the first evaluation of a short run is not pushed past a long start-up)."""
        self.last_checkpoint = self.elapsed()
        if self.evaluation.every_seconds is not None:
            self.last_evaluation = self.elapsed()

    def checkpoint_due(self, step: int) -> bool:
        ck = self.checkpoint
        if ck.every_steps and step % ck.every_steps == 0:
            return True
        return bool(ck.every_seconds) and self.elapsed() - self.last_checkpoint >= ck.every_seconds

    def checkpointed(self) -> None:
        self.last_checkpoint = self.elapsed()

    def evaluation_due(self, step: int, eval_seconds: float, batches_per_rank: int) -> bool:
        """every_steps, every_seconds, or (every_seconds=None) whenever one more evaluation keeps the share of
        the elapsed budget spent evaluating (`eval_seconds` so far) within max_share, *and* the time since the
        last evaluation has earned it at that share. So evaluations are spread over the run instead of coming on
        consecutive steps once a long start-up has made room for several."""
        ev = self.evaluation
        if ev.every_steps and step % ev.every_steps == 0:
            return True
        if ev.every_seconds is not None:
            return ev.every_seconds > 0 and self.elapsed() - self.last_evaluation >= ev.every_seconds
        estimate = self._evaluation_estimate(batches_per_rank)
        if estimate is None:
            return False
        elapsed = self.elapsed()
        return (eval_seconds + estimate <= ev.max_share * elapsed
                and estimate <= ev.max_share * (elapsed - self.last_evaluation))

    def _evaluation_estimate(self, batches_per_rank: int) -> float | None:
        """Seconds the next evaluation will take: as long as the last one, or before any, a forward pass of the
        subset at a third of the measured cost per training micro-batch (forward and backward)."""
        if self.evaluation_seconds is not None:
            return self.evaluation_seconds
        if not self.micro_batch_seconds:
            return None
        return batches_per_rank * self.micro_batch_seconds / 3

    def evaluated(self, seconds: float) -> None:
        self.evaluation_seconds = seconds
        self.last_evaluation = self.elapsed()

    def micro_batches(self, wanted: int, step: int) -> int:
        """The batch ramp's `wanted` micro-batches, trimmed near a wall-clock deadline so the run ends at most
        about one micro-batch late (a full step can take many seconds on a small GPU or a CPU). Seconds per
        micro-batch come from the agreed clock between step starts, skipping the first steps (compilation)."""
        now = self.elapsed()
        if self.last_step_start is not None and step > 2:
            started, micro_batches = self.last_step_start
            self.micro_batch_seconds = (now - started) / micro_batches
        if self.budget.seconds is not None and self.micro_batch_seconds:
            left = self.budget.seconds - now
            wanted = max(1, min(wanted, math.ceil(left / self.micro_batch_seconds)))
        self.last_step_start = (now, wanted)
        return wanted


@dataclass
class LaunchedStep:
    """A step queued on the device whose results are on their way to the host (read one step later)."""

    packet: Any  # host tensor: loss, nonfinite, rank 0's elapsed, stop votes, grad norm
    event: Any  # torch.cuda.Event marking the copy's end, None on a CPU
    step: int
    tokens: int  # after this step
    progress: float  # budget progress at the start of the step (what set its lr and batch size)
    lr: float
    accumulation: int
    batch_size: int  # sequences, all ranks together
    queued_at: float  # host time when the step was queued (~ when the previous one finished on a GPU)
