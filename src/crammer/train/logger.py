"""The step logger: what a person watching a run sees and what `metrics.jsonl` (and TensorBoard / W&B)
records: a row every `logging.every_steps` steps, and one per validation.

On a terminal the status sits in a progress bar; off one (nohup, tmux logs, a batch scheduler) each row is
one plain line on stderr, so the log reads line by line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from crammer.progress import interactive
from crammer.train.config import LoggingConfig
from crammer.train.metrics import GpuMonitor, MetricsLog, peak_flops, status_line
from crammer.train.state import Budget, LaunchedStep, TrainState
from crammer.train.validation import ValidationResult


class StepLogger:
    """Throughput over each logging interval, MFU, the mean loss of the healthy steps in it, GPU readings."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, enabled: bool, config: dict[str, Any],
                 device: torch.device, flops_per_token: float, world_size: int, budget: Budget):
        self.cfg = cfg
        self.device = device
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.budget = budget
        self.peak_flops = peak_flops(device, cfg.peak_tflops)
        self.metrics = MetricsLog(run_dir, cfg, enabled, config)
        self.gpu = GpuMonitor(device)
        self.enabled = enabled
        self.lines = enabled and not interactive()  # plain lines instead of a bar
        self.bar: tqdm | None = None  # from `start` on, on a terminal
        self.last = (0.0, 0)  # (host time, tokens) at the last logged step: see `start`
        self.losses: list[float] = []  # healthy steps since then

    def start(self, now: float, tokens: int) -> None:
        """The run starts: the progress bar appears, and the first interval's throughput counts from here
        (set-up and a resumed run's past do not count)."""
        if not self.lines:
            self.bar = tqdm(total=100, bar_format="{percentage:3.0f}% |{bar:20}| {desc}", disable=not self.enabled,
                            file=sys.stderr)
        self.last = (now, tokens)

    def resume_after(self, step: int) -> None:
        """Drop rows an interrupted run wrote after the checkpoint being resumed."""
        self.metrics.truncate_after(step)

    def due(self, step: int) -> bool:
        return step % self.cfg.every_steps == 0

    def add_loss(self, loss: float) -> None:
        self.losses.append(loss)

    def log(self, launched: LaunchedStep, grad_norm: float, elapsed: float, state: TrainState,
            micro_batch: int, progress_now: float) -> dict[str, Any]:
        """Write the row of a collected step; `progress_now` moves the bar."""
        tokens, queued_at = launched.tokens, launched.queued_at
        tokens_per_s = (tokens - self.last[1]) / max(queued_at - self.last[0], 1e-9)
        self.last = (queued_at, tokens)
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        record = {
            "step": launched.step,
            "tokens": tokens,
            "progress": launched.progress,
            "elapsed_s": elapsed,
            "remaining_s": self.budget.remaining_seconds(elapsed, tokens, tokens_per_s),
            "loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "lr": launched.lr,
            "batch_size": launched.batch_size,
            "micro_batch": micro_batch,
            "accumulation": launched.accumulation,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "nonfinite_total": state.nonfinite_total,
            "rollbacks": state.rollbacks,
            **self.gpu.sample(),
        }
        if self.device.type == "cuda":
            record["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.losses = []
        self.metrics.write(record)
        self._show(status_line(record), progress_now)
        return record

    def log_validation(self, state: TrainState, result: ValidationResult, elapsed: float,
                       progress: float) -> dict[str, Any]:
        """The row of one evaluation on the validation subset (its time counts against the budget)."""
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "progress": progress,
            "elapsed_s": elapsed,
            "val_loss": result.loss,
            "val_accuracy": result.accuracy,
            "val_sequences": result.sequences,
            **({} if result.bits_per_char is None else {"val_bits_per_char": result.bits_per_char}),
            "eval_seconds": state.eval_seconds,
            "eval_share": state.eval_seconds / max(elapsed, 1e-9),
        }
        self.metrics.write(record)
        bpc = "" if result.bits_per_char is None else f" | {result.bits_per_char:.4f} bits/char"
        self._show(f"validation at step {state.step} | loss {result.loss:.4f}{bpc} | accuracy {100 * result.accuracy:.2f}% "
                   f"| evaluation {100 * record['eval_share']:.1f}% of the time", progress, new_line=True)
        return record

    def _show(self, text: str, progress: float, new_line: bool = False) -> None:
        if not self.enabled:  # ranks > 0 of a DDP job
            return
        if self.lines:
            print(f"pretrain {100 * min(progress, 1.0):5.1f}% | {text}", file=sys.stderr, flush=True)
        elif self.bar is not None:
            if new_line:
                self.bar.write(text, file=sys.stderr)
            else:
                self.bar.n = round(100 * min(progress, 1.0), 1)
                self.bar.set_description_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
