"""One optimizer step: gradient accumulation, mixed precision, clipping, and a non-finite step skipped.

`cram pretrain`, `cram bench` and `cram plan` all run exactly this (built by `crammer.train.setup`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from crammer.runtime import autocast
from crammer.train.config import OptimConfig
from crammer.train.masking import MaskedBatch


@dataclass
class StepOutput:
    """Device tensors; reading them syncs, so the loop reads them one step late."""

    loss: torch.Tensor  # mean MLM loss over the step's micro-batches
    grad_norm: torch.Tensor  # global grad norm before clipping
    # bool, what the loop's NaN guard counts: the loss (or, without a GradScaler, the gradients) was not
    # finite and the update was skipped. A GradScaler also skips updates whose gradients overflowed, but
    # those are not flagged: backing off is how it finds its scale, not a sign of divergence.
    nonfinite: torch.Tensor


class TrainStep:
    """Gradient accumulation over micro-batches, AMP, clipping, and a non-finite step skipped.

    `model` may be compiled and/or wrapped in DistributedDataParallel (then gradients are synchronised
    only on the last micro-batch). With a fused AdamW the skip happens on the device (the `found_inf`
    hook that GradScaler also uses), so a normal step never waits for the GPU; any other optimizer (Muon, an
    unfused AdamW) is stepped only after the host has read that the step is finite.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | Any, cfg: OptimConfig, precision: str,
                 device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.cfg = cfg
        self.precision = precision
        self.device = device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.fused = bool(optimizer.defaults.get("fused"))

    def __call__(self, batches: Sequence[MaskedBatch], lr: float) -> StepOutput:
        for group in self.optimizer.param_groups:  # a group with its own peak lr (Muon's) keeps its ratio
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            is_last = i == len(batches) - 1
            sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not is_last else contextlib.nullcontext()
            with sync:
                with autocast(self.precision, self.device):
                    loss = self.model(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        labels=batch.labels,
                        masked_positions=batch.masked_positions,
                    ).loss
                scaled = loss / len(batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach().float()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.scaler:  # it skips updates with inf/nan gradients itself; an overflow only lowers its scale
            nonfinite = ~torch.isfinite(loss_sum)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            nonfinite = ~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm)
            if self.fused:
                self.optimizer.found_inf = nonfinite.float()
                self.optimizer.step()
                del self.optimizer.found_inf
            elif not bool(nonfinite):  # no device-side skip (unfused AdamW, Muon): one host sync per step
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss_sum / len(batches), grad_norm.detach(), nonfinite)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
