"""Learning-rate and batch-size schedules as pure functions of budget progress in [0, 1].

Progress is the elapsed fraction of the budget (wall clock, or tokens in token-count mode), so the
same recipe stretches to 10 minutes or 24 hours. Every lr schedule is exactly zero at progress 1.
"""

from __future__ import annotations

import math
from typing import Callable

from crammer.train.config import BatchConfig, ScheduleConfig


def _clip(progress: float) -> float:
    return min(max(float(progress), 0.0), 1.0)


def triangle(progress: float, peak: float, initial: float) -> float:
    """The cramming schedule: linear from `initial` up to 1 at `peak`, then linear down to 0 at 1."""
    p = _clip(progress)
    if p < peak:
        return initial + (1.0 - initial) * p / peak
    return (1.0 - p) / (1.0 - peak) if peak < 1.0 else 0.0


def one_cycle(progress: float, peak: float, initial: float) -> float:
    """One-cycle: cosine up from `initial` to 1 at `peak`, cosine annealing down to 0 at 1."""
    p = _clip(progress)
    if p < peak:
        return initial + (1.0 - initial) * 0.5 * (1.0 - math.cos(math.pi * p / peak))
    if peak >= 1.0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (p - peak) / (1.0 - peak)))


def linear(progress: float, peak: float) -> float:
    """Linear warm-up from 0 to 1 at `peak`, linear decay to 0 at 1."""
    p = _clip(progress)
    if p < peak:
        return p / peak
    return (1.0 - p) / (1.0 - peak) if peak < 1.0 else 0.0


def warmup_stable_decay(progress: float, peak: float, decay: float, shape: str = "linear") -> float:
    """WSD: linear warm-up to 1 at `peak`, constant, then down to 0 over the last `decay` of the budget: linearly,
    or as 1 - sqrt(t) of the decay's own progress t (ModernBERT's: it keeps the lr high for longer, then drops)."""
    p = _clip(progress)
    if p < peak:
        return p / peak
    if p < 1.0 - decay:
        return 1.0
    left = min((1.0 - p) / decay, 1.0)  # 1 - t: exactly 0 at the deadline, never past 1 by rounding
    return 1.0 - math.sqrt(1.0 - left) if shape == "sqrt" else left


def lr_multiplier(cfg: ScheduleConfig) -> Callable[[float], float]:
    """progress -> fraction of the peak learning rate, for the configured schedule."""
    if cfg.lr == "triangle":
        return lambda p: triangle(p, cfg.peak, cfg.initial)
    if cfg.lr == "one-cycle":
        return lambda p: one_cycle(p, cfg.peak, cfg.initial)
    if cfg.lr == "linear":
        return lambda p: linear(p, cfg.peak)
    return lambda p: warmup_stable_decay(p, cfg.peak, cfg.decay, cfg.decay_shape)


def accumulation_steps(progress: float, cfg: BatchConfig, micro_batch: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step so the global batch ramps linearly from one micro-batch (per
    device) to `cfg.target` sequences at progress `cfg.ramp`, and stays there."""
    per_step = micro_batch * world_size
    final = max(1, math.ceil(cfg.target / per_step))
    fraction = 1.0 if cfg.ramp <= 0 else min(_clip(progress) / cfg.ramp, 1.0)
    return min(final, 1 + math.floor((final - 1) * fraction + 1e-9))
