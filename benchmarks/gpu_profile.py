"""Where a GPU training step's time goes, and what a few compile-level variants change.

For each variant: tokens/s and MFU of the exact `TrainStep` that `cram pretrain` runs (synthetic tokens),
then for the named ones a torch.profiler pass whose kernels are summed by category (matrix products,
attention, fused elementwise/normalisation kernels, optimizer, cross-entropy, copies) beside the step's
wall time, so the gap between "busy GPU" and "step" (launch overhead, syncs) shows too.

Usage (GPU machine, repo root): PYTHONPATH=src python3 benchmarks/gpu_profile.py --out $OUT [--micro-batch 256]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import gzip
import json
import re
import time
from pathlib import Path

import torch

from crammer.model import training_flops_per_token
from crammer.train.bench import SPECIAL_TOKEN_IDS, hf_bert_baseline, synthetic_batches, time_steps
from crammer.train.config import make_pretrain_config
from crammer.train.masking import MLMCollator
from crammer.train.metrics import peak_flops
from crammer.runtime import configure_backends
from crammer.train.optimizers import build_optimizer
from crammer.train.setup import build_training, model_config_for
from crammer.train.step import TrainStep

CATEGORIES = [  # first match wins; matched against the lower-cased kernel name
    ("attention", r"flash|fmha|attention|sdpa"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|sm90_|cublas|matmul|splitk"),
    ("attention", r"dot_do_o|convert_dq"),  # cuDNN attention's helper kernels
    ("optimizer", r"adam|multi_tensor|foreach|_amp_|norm_kernel|lpnorm|reduce_kernel"),
    ("cross-entropy", r"nll|log_softmax|cross_entropy|softmax"),
    ("fused (triton)", r"^triton"),
    ("copy/cast", r"copy|cast|fill|memset|memcpy|cat_|index|gather|scatter|embedding"),
]


def categorise(name: str) -> str:
    lowered = name.lower()
    return next((cat for cat, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def kernel_breakdown(step, batches, steps: int, trace: Path | None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step([batches[i % len(batches)]])
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    if trace is not None:
        tmp = trace.with_suffix(".tmp.json")
        prof.export_chrome_trace(str(tmp))
        with open(tmp, "rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
            dst.write(src.read())
        tmp.unlink()
    by_cat, by_kernel = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or 0
        if device_us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        by_cat[categorise(event.key)] += device_us / steps
        by_kernel[event.key] += device_us / steps
        counts[event.key] += event.count / steps
    return {"wall_ms": wall * 1e3, "by_category_ms": {k: v / 1e3 for k, v in by_cat.most_common()},
            "top_kernels": [(k[:110], v / 1e3, counts[k]) for k, v in by_kernel.most_common(25)]}


@contextlib.contextmanager
def sdpa_backend(name: str | None):
    """Only this SDPA backend (flash, efficient, cudnn) while the variant compiles and runs; None = PyTorch's pick."""
    setters = {"flash": torch.backends.cuda.enable_flash_sdp, "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
               "cudnn": torch.backends.cuda.enable_cudnn_sdp}
    before = {"flash": torch.backends.cuda.flash_sdp_enabled(), "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
              "cudnn": torch.backends.cuda.cudnn_sdp_enabled()}
    if name:
        for backend, enable in setters.items():
            enable(backend == name)
    try:
        yield
    finally:
        for backend, enable in setters.items():
            enable(before[backend])


def run_variant(name, args, collator, peak, *, micro_batch, compile_mode="default", inductor=None,
                grad_clip=None, hf=False, profile=False, out=None, sdpa=None):
    # Inductor's on-disk cache keys on the graph, not on the SDPA flags: a variant that changes only the
    # backend must not reuse another variant's compiled code.
    with sdpa_backend(sdpa), torch._inductor.config.patch(fx_graph_cache=sdpa is None):
        return _run_variant(name, args, collator, peak, micro_batch=micro_batch, compile_mode=compile_mode,
                            inductor=inductor, grad_clip=grad_clip, hf=hf, profile=profile, out=out)


def _run_variant(name, args, collator, peak, *, micro_batch, compile_mode, inductor, grad_clip, hf, profile, out):
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    cfg = make_pretrain_config("crammed-bert", [])
    optim = cfg.optim if grad_clip is None else dataclasses.replace(cfg.optim, grad_clip=grad_clip)
    device = torch.device("cuda")
    training = build_training(cfg, model_config_for(cfg, args.vocab_size, args.seq_len, "--seq-len"),
                              SPECIAL_TOKEN_IDS, device)
    model, optimizer = training.model, training.optimizer
    flops = training_flops_per_token(model.config, args.seq_len, cfg.masking.fraction)
    if hf:
        config = model.config
        del model, optimizer
        model, flops = hf_bert_baseline(config, args.seq_len, device)
        optimizer = build_optimizer(model, optim)
    saved = {}
    for key, value in (inductor or {}).items():
        saved[key] = getattr(torch._inductor.config, key)
        setattr(torch._inductor.config, key, value)
    try:
        compiled = model if compile_mode == "none" else torch.compile(
            model, mode=None if compile_mode == "default" else compile_mode)
        step = TrainStep(compiled, optimizer, optim, "bf16", device)
        batches = synthetic_batches(collator, 4, micro_batch, args.seq_len, device)
        torch.cuda.reset_peak_memory_stats()
        warm, step_s = time_steps(lambda g: step(g, optim.lr).loss, batches, 1, args.warmup, args.steps, device)
        tps = micro_batch * args.seq_len / step_s
        row = {"variant": name, "micro_batch": micro_batch, "tokens_per_s": tps, "step_ms": step_s * 1e3,
               "mfu": tps * flops / peak, "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
               "warmup_s": warm, "gflop_per_token": flops / 1e9}
        if profile:
            row["profile"] = kernel_breakdown(lambda g: step(g, optim.lr).loss, batches, 5,
                                              out / f"trace-{name}.json")
    finally:
        for key, value in saved.items():
            setattr(torch._inductor.config, key, value)
    print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    if profile:
        p = row["profile"]
        busy = sum(p["by_category_ms"].values())
        print(f"  profile {name}: wall {p['wall_ms']:.1f} ms/step, kernels {busy:.1f} ms/step")
        for cat, ms in p["by_category_ms"].items():
            print(f"    {cat:16s} {ms:7.2f} ms  {100 * ms / p['wall_ms']:5.1f}%")
        for kernel, ms, count in p["top_kernels"][:15]:
            print(f"    {ms:7.2f} ms  x{count:5.0f}  {kernel}")
    return row


VARIANTS = {
    "base": dict(profile=True),
    "hf-bert": dict(hf=True, profile=True),
    "no-clip": dict(grad_clip=0.0),
    "coord-descent": dict(inductor={"coordinate_descent_tuning": True}),
    "reduce-overhead": dict(compile_mode="reduce-overhead"),
    "mb512": dict(micro_batch=512),
    "sdpa-flash": dict(sdpa="flash"),
    "sdpa-efficient": dict(sdpa="efficient"),
    "sdpa-cudnn": dict(sdpa="cudnn"),
    "max-autotune": dict(compile_mode="max-autotune-no-cudagraphs"),  # last: its autotuning takes minutes
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--micro-batch", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configure_backends(True)
    device = torch.device("cuda")
    peak = peak_flops(device, None)
    cfg = make_pretrain_config("crammed-bert", [])
    collator = MLMCollator(cfg.masking, args.vocab_size, SPECIAL_TOKEN_IDS)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    for name in args.variants.split(","):
        spec = dict(VARIANTS[name])
        spec.setdefault("micro_batch", args.micro_batch)
        try:
            rows.append(run_variant(name, args, collator, peak, out=args.out, **spec))
        except Exception as exc:  # one failing variant must not cost the others' figures
            print(f"variant {name} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        (args.out / "profile.json").write_text(json.dumps(rows, indent=1))
    print("\n| variant | micro-batch | tokens/s | step ms | MFU | peak GB | warm-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
              f"{100 * r['mfu']:.1f}% | {r['peak_gb']:.2f} | {r['warmup_s']:.1f} |")


if __name__ == "__main__":
    main()
