"""The micro-batch when none is set: the largest that fits the GPU, evened to the target batch."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.runtime import autocast
from crammer.train.masking import MLMCollator


def largest_fitting(fits: Callable[[int], bool], limit: int, start: int = 8, multiple: int = 8) -> int:
    """The largest micro-batch <= `limit` for which `fits(n)` holds: doubling, then bisection on
    multiples of `multiple` (tensor-core friendly). Raises if not even one sequence fits."""
    if not fits(1):
        raise CrammerError("not even a micro-batch of 1 sequence fits in GPU memory; use a smaller model")
    good, bad = 1, limit + 1  # invariant: fits(good), not fits(bad) (limit + 1 counts as not fitting)
    n = min(start, limit)
    while n > good:
        if not fits(n):
            bad = n
            break
        good, n = n, min(2 * n, limit)
    while bad - good > multiple:
        mid = (good + bad) // 2 // multiple * multiple
        if mid <= good:
            break
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def even_micro_batch(fitting: int, target: int, multiple: int = 8) -> int:
    """The smallest micro-batch that reaches `target` in as few accumulation steps as `fitting` does.

    E.g. 1080 fits and the target is 8192: 8 steps either way, but 8 x 1024 hits 8192 exactly where
    8 x 1080 would overshoot to 8640. Rounded up to a tensor-core friendly multiple, never above `fitting`.
    """
    steps = math.ceil(target / fitting)
    size = math.ceil(target / steps)
    return min(fitting, math.ceil(size / multiple) * multiple) if size >= multiple else size


def auto_micro_batch(fits: Callable[[int], bool], target: int, device: torch.device) -> int:
    """The largest micro-batch for which `fits(n)` holds (see `cuda_memory_probe`), evened so that
    accumulation reaches `target` sequences exactly. Peak-memory statistics are reset afterwards: the
    probe fills the GPU on purpose, and the peaks logged later must be training's."""
    micro_batch = even_micro_batch(largest_fitting(fits, limit=target), target)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return micro_batch


def cuda_memory_probe(
    model: nn.Module, collator: MLMCollator, seq_len: int, precision: str, memory_fraction: float
) -> Callable[[int], bool]:
    """fits(n): does a forward+backward of n sequences, plus AdamW's two fp32 moments, stay under
    `memory_fraction` of the GPU? Probed in eager mode; compiled graphs usually need less."""
    device = next(model.parameters()).device
    total = torch.cuda.get_device_properties(device).total_memory
    optimizer_bytes = 2 * sum(p.numel() * 4 for p in model.parameters())
    generator = torch.Generator().manual_seed(0)

    def fits(n: int) -> bool:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            batch = collator.random_batch(n, seq_len, generator).to(device)
            with autocast(precision, device):
                loss = model(input_ids=batch.input_ids, labels=batch.labels,
                             masked_positions=batch.masked_positions).loss
            loss.backward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            return peak + optimizer_bytes <= memory_fraction * total
        except torch.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return fits
