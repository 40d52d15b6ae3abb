"""One optimizer step, and everything needed to build one: model, AdamW, precision, micro-batch size.

`cram bench` times exactly this code: `build_model_and_optimizer(...)` then `TrainStep(...)(batches, lr)`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.model import CrammedBertForMaskedLM, make_config
from crammer.train.config import OptimConfig, PretrainConfig
from crammer.train.masking import MaskedBatch, MLMCollator

if TYPE_CHECKING:
    from crammer.data import PackedCorpus


def resolve_precision(requested: str, device: torch.device) -> str:
    """"auto" -> bf16 where the GPU supports it, fp16 (+ gradient scaler) on older GPUs, fp32 on CPU."""
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CrammerError("precision=bf16: this GPU does not support bfloat16; use precision=fp16")
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def configure_backends(tf32: bool) -> None:
    """TF32 matmuls/convolutions on Ampere and newer (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); leave norms, biases and scalars alone."""
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() yields each tied tensor once
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused
    )


def check_corpus_fits_model(cfg: PretrainConfig, corpus: PackedCorpus) -> None:
    """Fail before any set-up when the corpus's blocks are longer than the model's positions allow
    (otherwise the first forward pass fails, after minutes of compiling on a GPU)."""
    max_positions = make_config(cfg.model, corpus.vocab_size, cfg.model_overrides).max_position_embeddings
    if corpus.seq_len > max_positions:
        raise CrammerError(
            f"{corpus.path}: corpus sequences of {corpus.seq_len} tokens exceed the {cfg.model!r} model's "
            f"max_position_embeddings={max_positions}; pass model.max_position_embeddings={corpus.seq_len} "
            f"or prepare the corpus with --seq-len {max_positions}")


def build_model_and_optimizer(
    cfg: PretrainConfig, vocab_size: int, device: torch.device
) -> tuple[CrammedBertForMaskedLM, torch.optim.AdamW]:
    """The (uncompiled, unwrapped) model on `device`, initialised from `cfg.seed`, and its AdamW."""
    model_config = make_config(cfg.model, vocab_size, cfg.model_overrides)
    torch.manual_seed(cfg.seed)
    model = CrammedBertForMaskedLM(model_config).to(device)
    return model, build_optimizer(model, cfg.optim)


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
    hook that GradScaler also uses), so a normal step never waits for the GPU.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: OptimConfig, precision: str,
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
        for group in self.optimizer.param_groups:
            group["lr"] = lr
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
            elif not bool(nonfinite):  # unfused AdamW has no device-side skip: one host sync per step
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss_sum / len(batches), grad_norm.detach(), nonfinite)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


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


def auto_micro_batch(model: nn.Module, collator: MLMCollator, seq_len: int, precision: str,
                     memory_fraction: float, target: int) -> int:
    """The micro-batch used when none is set: the largest that fits under `memory_fraction` of the GPU,
    then evened so that accumulation reaches `target` sequences exactly."""
    fits = cuda_memory_probe(model, collator, seq_len, precision, memory_fraction)
    return even_micro_batch(largest_fitting(fits, limit=target), target)


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """`compile=None` means: compile on CUDA (where it pays for itself within minutes), not on CPU."""
    return setting if setting is not None else device.type == "cuda"


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
            tokens = collator.ordinary_ids[torch.randint(len(collator.ordinary_ids), (n, seq_len), generator=generator)]
            batch = collator(tokens, generator).to(device)
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
