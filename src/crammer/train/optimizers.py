"""Optimizers by name: `optim.name` picks a builder here (torchtitan's `build_optimizers` is the model).

A builder takes the model and its `OptimConfig` and returns one `torch.optim.Optimizer` whose param groups the
training step sets the learning rate of. A new optimizer is one entry in OPTIMIZERS (and its name in
`OptimConfig.name`'s Literal), with its own keys in `OptimConfig`; its state travels in checkpoints through
`state_dict()` like AdamW's.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from crammer.runtime import parameter_groups
from crammer.train.config import OptimConfig

OptimizerBuilder = Callable[[nn.Module, OptimConfig], torch.optim.Optimizer]


def adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel, and a non-finite step skipped on the device)."""
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused
    )


OPTIMIZERS: dict[str, OptimizerBuilder] = {"adamw": adamw}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](model, cfg)
