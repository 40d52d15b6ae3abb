"""`cram bench`: tokens/s, step time, MFU and peak memory of real training steps, ours vs Hugging Face.

Both models run the same kind of step in the same process: forward, backward, clipping and a fused
AdamW update, under the same precision and compile settings, on synthetic token blocks (the data path
is not what is measured here). Ours is exactly the `TrainStep` that `cram pretrain` runs, with sparse
MLM prediction on a fixed count of masked positions; the baseline is `transformers.BertForMaskedLM`
with SDPA attention of the same shape (layers, width, heads, feed-forward width, vocabulary), which
scores every position. MFU counts each model's own FLOPs per token (`training_flops_per_token`), so the baseline
is not charged for work it does not do, nor credited for work ours skips.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from crammer.data.tokenizer import SPECIAL_TOKENS
from crammer.errors import CrammerError
from crammer.io import atomic_path
from crammer.model import config_from_hf_bert, count_parameters, training_flops_per_token
from crammer.runtime import resolve_device, should_compile, synchronize
from crammer.train.config import make_pretrain_config
from crammer.train.masking import MaskedBatch, MaskingSchedule, MLMCollator
from crammer.train.metrics import peak_flops
from crammer.train.optimizers import build_optimizer
from crammer.train.setup import Training, build_training, model_config_for
from crammer.train.step import TrainStep

# A tokenizer trained by `cram data prepare` numbers its special tokens first, in this order.
SPECIAL_TOKEN_IDS = {name: i for i, name in enumerate(SPECIAL_TOKENS)}


@dataclass
class BenchResult:
    name: str
    micro_batch: int
    accumulate: int
    params: int
    flops_per_token: float
    compile_seconds: float  # first steps: compilation, autotuning, allocator warm-up
    step_seconds: float  # median optimizer step after warm-up
    tokens_per_second: float
    mfu: float | None
    peak_memory_gb: float | None

    def row(self) -> list[str]:
        return [
            self.name,
            str(self.micro_batch) + (f"x{self.accumulate}" if self.accumulate > 1 else ""),
            f"{self.params / 1e6:.1f}M",
            f"{self.flops_per_token / 1e9:.3f}",
            f"{self.tokens_per_second:,.0f}",
            f"{self.step_seconds * 1e3:.1f}",
            "-" if self.mfu is None else f"{100 * self.mfu:.1f}%",
            "-" if self.peak_memory_gb is None else f"{self.peak_memory_gb:.2f}",
            f"{self.compile_seconds:.1f}",
        ]


HEADER = ["model", "micro-batch", "params", "GFLOP/token", "tokens/s", "step ms", "MFU", "peak GB", "warm-up s"]


def format_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def synthetic_batches(collator: MLMCollator, count: int, micro_batch: int, seq_len: int, device: torch.device,
                      seed: int = 0) -> list[MaskedBatch]:
    """`count` masked micro-batches of random ordinary tokens, already on the device."""
    generator = torch.Generator().manual_seed(seed)
    return [collator.random_batch(micro_batch, seq_len, generator).to(device) for _ in range(count)]


def _step_groups(batches: list[MaskedBatch], accumulate: int, steps: int) -> list[list[MaskedBatch]]:
    """The micro-batches of `steps` optimizer steps, cycling through `batches`."""
    groups = [batches[(i * accumulate) % len(batches):][:accumulate] for i in range(steps)]
    return [g if len(g) == accumulate else batches[:accumulate] for g in groups]


def time_steps(step: Callable[[list[MaskedBatch]], torch.Tensor], batches: list[MaskedBatch], accumulate: int,
               warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the warm-up steps, median seconds per timed optimizer step)."""
    groups = _step_groups(batches, accumulate, warmup + steps)
    start = time.perf_counter()
    for group in groups[:warmup]:
        loss = step(group)
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    if not math.isfinite(float(loss)):
        raise CrammerError("benchmark step produced a non-finite loss")
    times = []
    for group in groups[warmup:]:
        start = time.perf_counter()
        step(group)
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return warmup_seconds, times[len(times) // 2]


def profile_steps(step: Callable[[list[MaskedBatch]], torch.Tensor], batches: list[MaskedBatch], accumulate: int,
                  steps: int, device: torch.device, trace: Path, row_limit: int = 15) -> str:
    """Run `steps` more (warm) optimizer steps under `torch.profiler`: write a Chrome/Perfetto trace and
    return the operators that take the most time of their own, which is where a kernel is worth fusing."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for group in _step_groups(batches, accumulate, steps):
            step(group)
        synchronize(device)
    with atomic_path(trace) as tmp:
        prof.export_chrome_trace(str(tmp))
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def choose_compile_mode(requested: str | None, setting: bool | None, device: torch.device) -> str:
    """`--compile MODE` if given, else what the recipe's `compile` key means on this device (as in pretraining)."""
    return requested or ("default" if should_compile(setting, device) else "none")


def _maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    if mode == "none":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def hf_bert_baseline(config, seq_len: int, device: torch.device):
    """`BertForMaskedLM` of the same shape as our `config` (layers, width, heads, feed-forward width,
    vocabulary) with SDPA attention and no dropout, plus its MLM training FLOPs per token."""
    from transformers import BertConfig, BertForMaskedLM

    hf_config = BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=max(config.max_position_embeddings, seq_len),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM._from_config(hf_config, attn_implementation="sdpa").to(device)
    # HF scores every position (dense decoder with its head transform): masked_fraction = 1.
    flops = training_flops_per_token(config_from_hf_bert(hf_config), seq_len, masked_fraction=1.0)
    return model, flops


def run_bench(args: argparse.Namespace) -> tuple[list[BenchResult], list[str]]:
    """The table's rows, and with `--profile` one top-operators table per row."""
    for flag in ("steps", "warmup", "accumulate"):
        if getattr(args, flag) < 1:
            raise CrammerError(f"--{flag} must be at least 1; got {getattr(args, flag)}")
    device = resolve_device(args.device, "--device")
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    cfg = make_pretrain_config(args.preset, args.overrides)
    if args.precision:
        cfg = dataclasses.replace(cfg, precision=args.precision)
    model_config = model_config_for(cfg, args.vocab_size, args.seq_len, "--seq-len")
    compile_mode = choose_compile_mode(args.compile, cfg.compile, device)
    seq_len = args.seq_len
    peak = peak_flops(device, args.peak_tflops)
    if args.memory_limit_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_limit_gb * 2**30 / total), device)

    training = build_training(cfg, model_config, SPECIAL_TOKEN_IDS, device)
    precision, collator = training.precision, training.collator
    micro_batches = _resolve_micro_batches(args, training)
    results, profiles = [], []

    def measure(name, step: TrainStep, params: int, flops: float, micro_batch: int):
        lr = step.cfg.lr
        batches = synthetic_batches(collator, max(2, args.accumulate * 2), micro_batch, seq_len, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm, step_s = time_steps(lambda g: step(g, lr).loss, batches, args.accumulate, args.warmup, args.steps,
                                  device)
        tps = micro_batch * args.accumulate * seq_len / step_s
        if args.profile:
            trace = Path(args.profile) / f"{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}-mb{micro_batch}.json"
            table = profile_steps(lambda g: step(g, lr).loss, batches, args.accumulate, 3, device, trace)
            profiles.append(f"profile of {name}, micro-batch {micro_batch} (trace: {trace}):\n{table}")
        results.append(BenchResult(
            name=name, micro_batch=micro_batch, accumulate=args.accumulate, params=params,
            flops_per_token=flops, compile_seconds=warm, step_seconds=step_s, tokens_per_second=tps,
            mfu=None if peak is None else tps * flops / peak,
            peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        ))

    flops = training_flops_per_token(model_config, seq_len, MaskingSchedule(cfg.masking).mean_fraction)
    for micro_batch in micro_batches:
        measure(f"crammer {args.preset} ({compile_mode})", training.step(_maybe_compile(training.model, compile_mode)),
                count_parameters(training.model), flops, micro_batch)
    del training
    if args.compare == "hf-bert":
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hf_model, hf_flops = hf_bert_baseline(model_config, seq_len, device)
        optim_cfg = dataclasses.replace(cfg.optim, fused=cfg.optim.fused and device.type == "cuda")
        theirs = TrainStep(_maybe_compile(hf_model, compile_mode), build_optimizer(hf_model, optim_cfg), optim_cfg,
                           precision, device)
        measure(f"HF BertForMaskedLM ({compile_mode})", theirs, count_parameters(hf_model), hf_flops,
                micro_batches[0])
    return results, profiles


def _resolve_micro_batches(args, training: Training) -> list[int]:
    """`--micro-batch`: 'auto' (largest that fits), one number, or a comma-separated sweep."""
    if args.micro_batch != "auto":
        try:
            values = [int(v) for v in str(args.micro_batch).split(",")]
        except ValueError:
            raise CrammerError(f"--micro-batch must be 'auto' or numbers like 128,256; got {args.micro_batch!r}") from None
        if any(v <= 0 for v in values):
            raise CrammerError(f"--micro-batch values must be positive; got {args.micro_batch!r}")
        return values
    cfg, device = training.cfg, training.device
    if device.type != "cuda":
        return [cfg.batch.micro_batch or 8]
    fraction = cfg.batch.memory_fraction
    if args.memory_limit_gb:  # size against the cap, not the whole card
        total = torch.cuda.get_device_properties(device).total_memory
        fraction *= min(1.0, args.memory_limit_gb * 2**30 / total)
    return [training.fit_micro_batch(args.seq_len, cfg.batch.target, fraction)]


def main(args: argparse.Namespace) -> int:
    results, profiles = run_bench(args)
    device = resolve_device(args.device, "--device")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_flops(device, args.peak_tflops)
    print(f"device: {name}; torch {torch.__version__}; seq_len {args.seq_len}; "
          f"peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    print(format_table([r.row() for r in results]))
    if args.compare == "hf-bert":
        ours, theirs = results[0], results[-1]
        print(f"ratio (crammer / HF): tokens/s {ours.tokens_per_second / theirs.tokens_per_second:.2f}x"
              + (f", MFU {ours.mfu / theirs.mfu:.2f}x" if ours.mfu and theirs.mfu else ""))
    for profile in profiles:
        print(f"\n{profile}")
    return 0
