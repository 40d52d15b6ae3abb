"""`cram pretrain` and `cram plot`."""

from __future__ import annotations

import argparse
import sys

from crammer.config import parse_duration
from crammer.train.config import PRESETS, make_pretrain_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a masked LM within a wall-clock (or token) budget",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain a crammed BERT on a prepared corpus; RUN_DIR/final is a Hugging Face folder.\n"
        "Multi-GPU: torchrun --nproc_per_node=N -m crammer pretrain ...",
        epilog="Overrides: key=value on any PretrainConfig field, e.g. optim.lr=5e-4 schedule.lr=wsd "
        "batch.target=4096 data.order=shuffled checkpoint.every_seconds=600; model.X=... sets a model "
        "config field, e.g. model.num_hidden_layers=8.",
    )
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="a folder from `cram data prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (checkpoints, metrics, final/)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", metavar="DURATION", help="wall-clock budget: 90s, 10m, 1.5h, 24h (default 24h)")
    budget.add_argument("--budget-tokens", type=int, metavar="N", help="token budget instead (reproducible runs)")
    p.add_argument("--preset", default="crammed-bert", choices=sorted(PRESETS), help="recipe (crammed-bert)")
    p.add_argument("--micro-batch", type=int, metavar="N", help="sequences per forward (default: largest that fits)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_pretrain)

    q = subparsers.add_parser("plot", help="PNG plots of a run's metrics (loss, lr, batch, throughput, GPU)")
    q.add_argument("run_dir", metavar="RUN_DIR")
    q.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/plots)")
    q.set_defaults(func=_plot)


def _pretrain(args: argparse.Namespace) -> int:
    from crammer.train.loop import TrainingInterrupted, pretrain

    overrides = list(args.overrides)
    if args.micro_batch is not None:
        overrides.append(f"batch.micro_batch={args.micro_batch}")
    cfg = make_pretrain_config(
        args.preset, overrides,
        budget_seconds=parse_duration(args.budget) if args.budget else None,
        budget_tokens=args.budget_tokens,
    )
    try:
        final = pretrain(cfg, args.data, args.out, resume=args.resume)
    except TrainingInterrupted as e:
        print(f"cram: {e}", file=sys.stderr)
        return 128 + int(e.signum)  # the shell convention for "ended by signal N"
    print(final)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from crammer.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0

