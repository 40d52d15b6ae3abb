"""What a run carries from step to step and across `--resume`: the counters, the budget and its clock."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable


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
