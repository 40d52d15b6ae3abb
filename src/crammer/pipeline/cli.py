"""`cram run` (the whole chain in one resumable folder) and `cram pretrain` (pretraining and its model card)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    _register_pretrain(sub)
    _register_run(sub)


def _register_pretrain(subparsers: argparse._SubParsersAction) -> None:
    from crammer.train.config import PRESETS

    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a masked LM within a wall-clock (or token) budget",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain a crammed BERT on a prepared corpus; RUN_DIR/final is a Hugging Face folder.\n"
        "Multi-GPU: torchrun --nproc-per-node=G -m crammer pretrain ...; several machines: torchrun --nnodes=N "
        "--nproc-per-node=G --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --max-restarts=K -m crammer pretrain "
        "... --resume auto (RUN_DIR on storage all nodes share).",
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
    p.add_argument("--resume", nargs="?", action=_ResumeAction, default=False, metavar="auto",
                   help="continue from the newest checkpoint in RUN_DIR, or start where there is none yet "
                   "(`--resume auto`: the same, spelt for `torchrun --max-restarts`)")
    p.add_argument("--init-from", metavar="MODEL", help="a new run starting from MODEL's weights and architecture: "
                   "a crammer folder (final/, a checkpoint), a Hugging Face BERT or modernbert folder, or a hub id; "
                   "the corpus must be prepared with its tokenizer (cram data prepare --tokenizer MODEL)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_pretrain, overrides_before=[])


class _ResumeAction(argparse.Action):
    """`--resume` (True) or `--resume auto`. Any other word after `--resume` is the first config override
    (`--resume optim.lr=1e-3`), which argparse took for the flag's value: it goes back to the overrides."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value not in (None, "auto"):
            namespace.overrides_before = [*namespace.overrides_before, value]
        setattr(namespace, self.dest, "auto" if value == "auto" else True)


def _register_run(sub: argparse._SubParsersAction) -> None:
    from crammer.eval.config import PROTOCOLS
    from crammer.pipeline.presets import RUN_PRESETS

    run = sub.add_parser(
        "run",
        help="raw text -> corpus -> budgeted pretraining -> GLUE -> report, resumable",
        description="Chain data preparation, pretraining within --budget, GLUE evaluation and the report "
        "in one folder. Re-running the same command skips finished stages and resumes pretraining from "
        "its last checkpoint. The budget is for pretraining only; data preparation and GLUE are extra.",
    )
    run.add_argument("--source", action="append", default=[], metavar="SRC",
                     help="corpus source as for `cram data prepare` (repeatable); default: the preset's")
    run.add_argument("--budget", help="pretraining wall-clock budget, e.g. 90s, 10m, 24h (default: the preset's)")
    run.add_argument("--out", required=True, type=Path, help="run folder (RUN_DIR)")
    run.add_argument("--preset", default="crammed-bert", choices=sorted(RUN_PRESETS),
                     help="crammed-bert: the paper's 24 h recipe on hub data; demo: a few CPU minutes, "
                     "offline; tiny: seconds, for tests (default: crammed-bert)")
    run.add_argument("--init-from", metavar="MODEL", help="pretrain from MODEL's weights and architecture (a "
                     "crammer, Hugging Face BERT or modernbert folder, or a hub id); the corpus is prepared with its "
                     "tokenizer")
    run.add_argument("--glue-dir", help="local glue_data folder (default: the Hugging Face hub)")
    run.add_argument("--tasks", help="GLUE tasks, comma-separated, or 'all' (default: the preset's)")
    run.add_argument("--trials", type=int, help="fine-tuning trials (seeds) per GLUE task")
    run.add_argument("--glue-protocol", choices=sorted(PROTOCOLS),
                     help="GLUE fine-tuning protocol (default: the preset's, sane for every preset)")
    run.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE",
                     help="config overrides, e.g. data.vocab_size=16384 pretrain.optim.lr=5e-4 glue.epochs=3")
    run.set_defaults(func=_run)


def _pretrain(args: argparse.Namespace) -> int:
    from crammer.config import parse_duration
    from crammer.pipeline.pretrain import pretrain
    from crammer.train.config import make_pretrain_config
    from crammer.train.loop import TrainingInterrupted

    overrides = [*args.overrides_before, *args.overrides]
    if args.micro_batch is not None:
        overrides.append(f"batch.micro_batch={args.micro_batch}")
    cfg = make_pretrain_config(
        args.preset, overrides,
        budget_seconds=parse_duration(args.budget) if args.budget else None,
        budget_tokens=args.budget_tokens, init_from=args.init_from,
    )
    try:
        final = pretrain(cfg, args.data, args.out, resume=args.resume)
    except TrainingInterrupted as e:
        print(f"cram: {e}", file=sys.stderr)
        return 128 + int(e.signum)  # the shell convention for "ended by signal N"
    print(final)
    return 0


def _run(args: argparse.Namespace) -> int:
    from crammer.pipeline.run import make_run_config, run
    from crammer.train.loop import TrainingInterrupted

    config = make_run_config(
        args.preset, args.out, sources=args.source, budget=args.budget, glue_dir=args.glue_dir,
        tasks=args.tasks, trials=args.trials, glue_protocol=args.glue_protocol, overrides=args.overrides,
        init_from=args.init_from,
    )
    command = _command_line(args)
    try:
        run(config, args.out, command)
    except TrainingInterrupted as e:  # `cram run` resumes by itself: the same command continues
        print(f"cram: pretraining stopped by {signal.Signals(e.signum).name}; a checkpoint was written. "
              f"Run the same command again to continue: {shlex.join(command)}", file=sys.stderr)
        return 128 + int(e.signum)  # the shell convention for "ended by signal N"
    return 0


def _command_line(args: argparse.Namespace) -> list[str]:
    """The invocation in canonical form, for the report's reproducibility section."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = [f"--nnodes={world_size // per_node}"] if world_size > per_node else []
    cmd = ["torchrun", *nodes, f"--nproc-per-node={per_node}", "-m", "crammer"] if world_size > 1 else ["cram"]
    cmd += ["run", "--preset", args.preset, "--out", str(args.out)]
    for source in args.source:
        cmd += ["--source", source]
    for flag, value in (("--budget", args.budget), ("--init-from", args.init_from), ("--glue-dir", args.glue_dir),
                        ("--tasks", args.tasks),
                        ("--trials", args.trials), ("--glue-protocol", args.glue_protocol)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(args.overrides)
