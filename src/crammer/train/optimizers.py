"""Optimizers by name: `optim.name` picks a builder here (torchtitan's `build_optimizers` is the model).

A builder takes the model and its `OptimConfig` and returns one `torch.optim.Optimizer`-like object whose
param groups the training step sets the learning rate of (each group's `lr_scale` times the scheduled lr, 1
when absent). A new optimizer is one entry in OPTIMIZERS (and its name in `OptimConfig.name`'s Literal), with
its own keys in `OptimConfig`; its state travels in checkpoints through `state_dict()` like AdamW's.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.runtime import parameter_groups
from crammer.train.config import OptimConfig

# The hidden weight matrices of the blocks: `bert.layers.N.` (crammed BERT), `encoder.layer.N.` (Hugging Face BERT).
BLOCK_PARAMETER = re.compile(r"(^|\.)(layers|layer)\.\d+\.")

OptimizerBuilder = Callable[[nn.Module, OptimConfig], Any]


def adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel, and a non-finite step skipped on the device)."""
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused
    )


class Optimizers:
    """Several optimizers stepped as one (Muon for the matrices, AdamW for the rest): the `param_groups`,
    `step`, `zero_grad` and `state_dict` the training step and checkpoints use."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.defaults = {"fused": False}  # no device-side skip of a non-finite step: the step syncs to decide

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Read afresh each time: `load_state_dict` replaces an optimizer's group dicts."""
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise CrammerError(f"optimizer state holds {', '.join(sorted(state))}, not "
                               f"{', '.join(sorted(self.optimizers))}: resume with the optimizer it was saved with")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def muon(model: nn.Module, cfg: OptimConfig) -> Optimizers:
    """`torch.optim.Muon` (orthogonalised momentum) for the blocks' 2-D weight matrices; AdamW with the `optim.*`
    keys for the embeddings (and the decoder tied to them), norms, biases and scalars, as Muon's authors advise."""
    if not hasattr(torch.optim, "Muon"):
        raise CrammerError(f"optim.name=muon needs torch.optim.Muon (PyTorch >= 2.9); this is torch "
                           f"{torch.__version__}")
    matrices, others = [], []
    for name, param in model.named_parameters():  # named_parameters() yields each tied tensor once
        if param.requires_grad:
            (matrices if param.ndim == 2 and BLOCK_PARAMETER.search(name) else others).append(param)
    if not matrices:
        raise CrammerError(f"optim.name=muon: {type(model).__name__} has no block weight matrices (parameters named "
                           "'layers.N.' or 'layer.N.')")
    muon_lr = cfg.muon_lr if cfg.muon_lr is not None else cfg.lr
    decay = cfg.muon_weight_decay if cfg.muon_weight_decay is not None else cfg.weight_decay
    orthogonal = torch.optim.Muon([{"params": matrices, "lr_scale": muon_lr / cfg.lr}], lr=muon_lr,
                                  weight_decay=decay, momentum=cfg.muon_momentum, adjust_lr_fn=cfg.muon_adjust_lr)
    rest = torch.optim.AdamW([g for g in parameter_groups(nn.ParameterList(others), cfg.weight_decay) if g["params"]],
                             lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused)
    return Optimizers(muon=orthogonal, adamw=rest)


OPTIMIZERS: dict[str, OptimizerBuilder] = {"adamw": adamw, "muon": muon}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer | Optimizers:
    return OPTIMIZERS[cfg.name](model, cfg)
