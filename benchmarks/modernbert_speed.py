"""Pretraining speed of the ModernBERT shape against crammed BERT of the same size, on CPU, in one process.

Both are built by `crammer.train.setup.build_training` from the pretraining recipe (fp32 on CPU, eager, AdamW, 25%
masking, sparse prediction) and timed on the same synthetic token blocks with `crammer.train.bench.time_steps`.
The two models alternate round by round (and which goes first alternates too), so a shared, busy machine slows both
alike; the table gives the median over rounds of each round's median step.

    .venv/bin/python benchmarks/modernbert_speed.py                    # small size (4 x 256, GLU 1024), 1 thread
    .venv/bin/python benchmarks/modernbert_speed.py --size tiny --rounds 9
    .venv/bin/python benchmarks/modernbert_speed.py --size full --micro-batch 4 --rounds 5 --steps 3
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from crammer.train.bench import synthetic_batches, time_steps
from crammer.train.config import make_pretrain_config
from crammer.train.setup import build_training, model_config_for

SIZES = {
    "tiny": ["hidden_size=128", "num_hidden_layers=2", "num_attention_heads=2", "intermediate_size=512"],
    "small": ["hidden_size=256", "num_hidden_layers=4", "num_attention_heads=4", "intermediate_size=1024"],
    "full": [],  # the presets' own size: crammed BERT's 16 layers x 768 (a step takes seconds on one core)
}
MODELS = ("crammed-bert", "modernbert")
SPECIAL_TOKEN_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    sides = {}
    for name in MODELS:
        overrides = [f"model={name}", *(f"model.{o}" for o in SIZES[args.size])]
        cfg = make_pretrain_config("crammed-bert", overrides, budget_tokens=1)
        training = build_training(cfg, model_config_for(cfg, args.vocab_size, args.seq_len, "--seq-len"),
                                  SPECIAL_TOKEN_IDS, device)
        batches = synthetic_batches(training.collator, 4, args.micro_batch, args.seq_len, device)
        step = training.step(training.model)
        sides[name] = (step, batches, sum(p.numel() for p in training.model.parameters()))
    per_round = {name: [] for name in MODELS}
    for r in range(args.rounds):
        for name in (MODELS if r % 2 == 0 else MODELS[::-1]):
            step, batches, _ = sides[name]
            _, seconds = time_steps(lambda g: step(g, step.cfg.lr).loss, batches, 1, 2, args.steps, device)
            per_round[name].append(args.micro_batch * args.seq_len / seconds)
    print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"size {args.size}, micro-batch {args.micro_batch} x {args.seq_len}, vocab {args.vocab_size}, fp32, "
          f"{args.rounds} interleaved rounds x {args.steps} steps")
    print("| model | params | tokens/s (median) | min | max |")
    print("|---|---:|---:|---:|---:|")
    for name in MODELS:
        rates = per_round[name]
        print(f"| {name} | {sides[name][2] / 1e6:.2f}M | {statistics.median(rates):,.0f} | {min(rates):,.0f} | "
              f"{max(rates):,.0f} |")
    ratio = statistics.median(m / c for m, c in zip(per_round["modernbert"], per_round["crammed-bert"]))
    print(f"modernbert / crammed-bert, median of the per-round ratios: {ratio:.3f}")


if __name__ == "__main__":
    main()
