"""What to do about non-finite steps: skip each one; after a streak roll back, then give up."""

from __future__ import annotations

from typing import Literal

from crammer.train.config import GuardConfig
from crammer.train.state import TrainState

Action = Literal["ok", "skip", "rollback", "stop"]


class NonFiniteGuard:
    """Skip each non-finite step; after `max_nonfinite_in_a_row` in a row roll back (at most `max_rollbacks`
    times), then stop. Its totals live in the run's TrainState, so they survive a resume."""

    def __init__(self, cfg: GuardConfig, state: TrainState):
        self.cfg = cfg
        self.state = state
        self.in_a_row = 0

    def update(self, nonfinite: bool) -> Action:
        if not nonfinite:
            self.in_a_row = 0
            return "ok"
        self.state.nonfinite_total += 1
        self.in_a_row += 1
        if self.in_a_row < self.cfg.max_nonfinite_in_a_row:
            return "skip"
        self.in_a_row = 0
        if self.state.rollbacks < self.cfg.max_rollbacks:
            self.state.rollbacks += 1
            return "rollback"
        return "stop"
