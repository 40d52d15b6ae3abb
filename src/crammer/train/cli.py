"""`cram plot`, `cram bench`, `cram validate` and `cram plan` (`cram pretrain` composes training with the model
card, so it lives in `crammer.pipeline.cli`). Building the parsers imports only the configs; each command imports
what it runs."""

from __future__ import annotations

import argparse

from crammer.config import parse_duration
from crammer.train.config import make_pretrain_config

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def register(subparsers) -> None:
    q = subparsers.add_parser("plot", help="PNG plots of a run's metrics (loss, lr, batch, throughput, GPU)")
    q.add_argument("run_dir", metavar="RUN_DIR")
    q.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/plots)")
    q.set_defaults(func=_plot)

    b = subparsers.add_parser("bench", help="time real training steps: tokens/s, MFU, memory (vs Hugging Face BERT)")
    b.add_argument("--preset", default="crammed-bert", help="pretrain preset (its model and recipe)")
    b.add_argument("--micro-batch", default="auto", help="sequences per forward, or 'auto' (largest that fits)")
    b.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    b.add_argument("--steps", type=int, default=20, help="timed optimizer steps (median reported)")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, autotune)")
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--vocab-size", type=int, default=32768)
    b.add_argument("--compare", choices=["hf-bert", "none"], default="hf-bert")
    b.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    b.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None, help="default: the preset's (auto)")
    b.add_argument("--compile", choices=COMPILE_MODES, default=None, help="torch.compile mode (default: on for CUDA)")
    b.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: built-in table)")
    b.add_argument("--memory-limit-gb", type=float, default=None,
                   help="cap this process's GPU memory, e.g. 8 to size for an 8 GB card")
    b.add_argument("--profile", metavar="DIR", default=None,
                   help="also profile 3 steps per row: a trace per row in DIR and a table of the costliest operators")
    b.add_argument("overrides", nargs="*", help="pretrain config overrides key=value (model.X=... for the model)")
    b.set_defaults(func=_bench)

    v = subparsers.add_parser(
        "validate",
        help="validation MLM loss and accuracy of a saved model on a prepared corpus's held-out documents",
        description="The measurement `cram pretrain` logs (fixed subset, fixed masks), for any saved MLM folder: "
        "final/, a checkpoint, or a Hugging Face model with the same tokenizer. Compare runs and checkpoints.",
    )
    v.add_argument("model", metavar="MODEL_DIR", help="a model folder (RUN_DIR/final, RUN_DIR/checkpoints/step-N, ...)")
    v.add_argument("--data", required=True, metavar="DATA_DIR", help="the prepared corpus (its validation split)")
    v.add_argument("--sequences", type=int, metavar="N",
                   help="subset size (default: the run's eval.sequences, else 1024)")
    v.add_argument("--batch-size", type=int, default=32, metavar="N", help="sequences per forward (32)")
    v.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    v.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    v.add_argument("--json", action="store_true", help="print the result as one JSON object")
    v.set_defaults(func=_validate)

    plan = subparsers.add_parser(
        "plan",
        help="measure this machine's throughput and say what a budget buys",
        description="Time real training steps of the preset on this machine, then print the tokens the "
        "budget will consume, the passes over the prepared data, the micro-batch and accumulation, and "
        "the FLOP budget next to the reference runs (1xA6000 for 24 h; BERT-base).",
    )
    plan.add_argument("--data", required=True, help="prepared corpus (from `cram data prepare`)")
    plan.add_argument("--budget", default="24h", help="pretraining budget to plan (default: 24h)")
    plan.add_argument("--preset", default="crammed-bert", help="pretrain preset (default: crammed-bert)")
    plan.add_argument("--seconds", type=float, default=30.0,
                      help="how long to time training steps after warm-up (default: 30)")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="pretrain config overrides, e.g. batch.micro_batch=64 model.num_hidden_layers=8")
    plan.set_defaults(func=_plan)


def _plot(args: argparse.Namespace) -> int:
    from crammer.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from crammer.train.bench import main

    return main(args)


def _validate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from crammer.errors import CrammerError
    from crammer.train.validation import validate_model

    if args.batch_size < 1 or (args.sequences is not None and args.sequences < 1):
        raise CrammerError("--batch-size and --sequences must be at least 1")
    result = validate_model(args.model, args.data, args.sequences, args.batch_size, args.device, args.precision)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **dataclasses.asdict(result)}))
    else:
        bpc = "" if result.bits_per_char is None else f" | {result.bits_per_char:.4f} bits/char"
        print(f"validation loss {result.loss:.4f}{bpc} | accuracy {100 * result.accuracy:.2f}% | {result.sequences} "
              f"sequences, {result.masked_tokens:,} masked tokens | {args.model} on {args.data}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from crammer.data import PackedCorpus
    from crammer.train.plan import format_plan, measure_plan

    budget = parse_duration(args.budget)
    corpus = PackedCorpus(args.data)
    cfg = make_pretrain_config(args.preset, args.overrides, budget_seconds=budget)
    print(format_plan(measure_plan(cfg, corpus, args.preset, budget, args.seconds)))
    return 0
