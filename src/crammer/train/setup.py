"""Everything a training step needs, built one way for `cram pretrain`, `cram bench` and `cram plan`: the
model config checked against the data, backends, precision, model, AdamW, masking, micro-batch, step.
Each check and each of its error messages lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.model import CrammedBertConfig, CrammedBertForMaskedLM, make_config
from crammer.model.presets import check_positions
from crammer.runtime import configure_backends, parameter_groups, resolve_precision, should_compile
from crammer.train.config import OptimConfig, PretrainConfig
from crammer.train.masking import MLMCollator
from crammer.train.sizing import auto_micro_batch, cuda_memory_probe
from crammer.train.step import TrainStep


def model_config_for(cfg: PretrainConfig, vocab_size: int, seq_len: int, setting: str) -> CrammedBertConfig:
    """The config's model for a vocabulary, checked against the sequence length it will see (`setting` names
    where that length comes from) before anything is built: too long a sequence would otherwise fail in the
    first forward pass, after minutes of compiling on a GPU."""
    config = make_config(cfg.model, vocab_size, cfg.model_overrides)
    check_positions(seq_len, config, setting, f"the {cfg.model!r} model",
                    f"pass model.max_position_embeddings={seq_len} or use sequences of at most {{limit}} tokens")
    return config


def check_micro_batch(cfg: PretrainConfig, cuda: bool, prefix: str = "") -> None:
    """Auto-sizing the micro-batch needs a GPU to measure; `prefix` is where the key sits in the user's
    command (`pretrain.` under `cram run`)."""
    if cfg.batch.micro_batch is None and not cuda:
        raise CrammerError(f"{prefix}batch.micro_batch must be set without a GPU (auto-sizing needs CUDA), "
                           f"e.g. {prefix}batch.micro_batch=16")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused
    )


@dataclass
class Training:
    """The pieces of pretraining one config builds; `model` is the plain module (not compiled by `step`,
    not wrapped), whose parameter names are what checkpoints store."""

    cfg: PretrainConfig
    device: torch.device
    precision: str
    model: CrammedBertForMaskedLM
    optimizer: torch.optim.AdamW
    collator: MLMCollator

    def micro_batch(self, seq_len: int, target: int | None = None, memory_fraction: float | None = None) -> int:
        """The configured micro-batch, or the largest that fits `memory_fraction` of the GPU (the config's by
        default) evened to `target` sequences (the config's global batch by default). Probed in eager mode,
        so call it before `compile`."""
        if self.cfg.batch.micro_batch:
            return self.cfg.batch.micro_batch
        check_micro_batch(self.cfg, self.device.type == "cuda")
        return self.fit_micro_batch(seq_len, target or self.cfg.batch.target,
                                    memory_fraction or self.cfg.batch.memory_fraction)

    def fit_micro_batch(self, seq_len: int, target: int, memory_fraction: float) -> int:
        """The largest micro-batch that fits `memory_fraction` of the GPU, evened to `target` (CUDA only)."""
        fits = cuda_memory_probe(self.model, self.collator, seq_len, self.precision, memory_fraction)
        return auto_micro_batch(fits, target, self.device)

    def compile(self) -> bool:
        """torch.compile in place (parameter names and state_dict keys stay unchanged), where the config
        asks for it (`compile=None`: on CUDA)."""
        if not should_compile(self.cfg.compile, self.device):
            return False
        self.model.compile()
        return True

    def step(self, model: nn.Module | None = None) -> TrainStep:
        """The optimizer step over `model` (default: ours; a DDP wrapper or a compiled copy of it)."""
        return TrainStep(model or self.model, self.optimizer, self.cfg.optim, self.precision, self.device)


def build_training(cfg: PretrainConfig, model_config: CrammedBertConfig, special_tokens: dict[str, int],
                   device: torch.device) -> Training:
    """Backends, precision, the model initialised from `cfg.seed` on `device`, its AdamW, the MLM masking."""
    configure_backends(cfg.tf32)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = CrammedBertForMaskedLM(model_config).to(device)
    collator = MLMCollator(cfg.masking, model_config.vocab_size, special_tokens)
    return Training(cfg, device, precision, model, build_optimizer(model, cfg.optim), collator)
