"""The machine a stage runs on: device, precision and autocast, TF32, the compile decision, AdamW's decay
groups, and waiting for the GPU. Pretraining, `cram bench`, `cram plan` and fine-tuning all decide these
the same way, so they live here, below `train` and `eval`, which never import each other.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from crammer.errors import CrammerError


def resolve_device(name: str, setting: str) -> torch.device:
    """A torch device from a user's setting ('auto' = CUDA when available), or an error naming the setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CrammerError(f"{setting}={name!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CrammerError(f"{setting}={name} but CUDA is not available")
    return device


def resolve_precision(requested: str, device: torch.device, fp16: bool = True, cpu_bf16: bool = False) -> str:
    """"auto" -> bf16 where the GPU supports it, else fp16 (+ gradient scaler; only where the caller has one,
    `fp16=True`) on older GPUs, else fp32. On CPU fp32, or bf16 where the caller wants it and the CPU multiplies
    bf16 natively (`cpu_bf16=cpu_has_native_bf16()`): fine-tuning does, pretraining on a CPU (tests, demos) not."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not bf16_ok:
            raise CrammerError("precision=bf16: this GPU does not support bfloat16; use precision=fp16")
        return requested
    if bf16_ok or (device.type == "cpu" and cpu_bf16):
        return "bf16"
    return "fp16" if fp16 and device.type == "cuda" else "fp32"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX (Sapphire Rapids and later): oneDNN's bf16 matrix
    products then run at several times fp32's rate (4.5x for BERT's shapes on a Zen CPU); other CPUs only
    emulate bf16, with nothing to gain. (`torch.cpu`'s checks are private: a torch without them counts as no.)"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The mixed-precision context of a resolved precision (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def configure_backends(tf32: bool) -> None:
    """TF32 matmuls/convolutions on Ampere and newer (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """`compile=None` means: compile on CUDA (where it pays for itself within minutes), not on CPU."""
    return setting if setting is not None else device.type == "cuda"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); leave norms, biases and scalars alone."""
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() yields each tied tensor once
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (timing); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
