"""`cram run`: the whole chain in one resumable folder."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
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
    run.add_argument("--glue-dir", help="local glue_data folder (default: the Hugging Face hub)")
    run.add_argument("--tasks", help="GLUE tasks, comma-separated, or 'all' (default: the preset's)")
    run.add_argument("--trials", type=int, help="fine-tuning trials (seeds) per GLUE task")
    run.add_argument("--glue-protocol", choices=sorted(PROTOCOLS),
                     help="GLUE fine-tuning protocol (default: the preset's, sane for every preset)")
    run.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE",
                     help="config overrides, e.g. data.vocab_size=16384 pretrain.optim.lr=5e-4 glue.epochs=3")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from crammer.pipeline.run import make_run_config, run
    from crammer.train.loop import TrainingInterrupted

    config = make_run_config(
        args.preset, args.out, sources=args.source, budget=args.budget, glue_dir=args.glue_dir,
        tasks=args.tasks, trials=args.trials, glue_protocol=args.glue_protocol, overrides=args.overrides,
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
    cmd = ["torchrun", f"--nproc_per_node={world_size}", "-m", "crammer"] if world_size > 1 else ["cram"]
    cmd += ["run", "--preset", args.preset, "--out", str(args.out)]
    for source in args.source:
        cmd += ["--source", source]
    for flag, value in (("--budget", args.budget), ("--glue-dir", args.glue_dir), ("--tasks", args.tasks),
                        ("--trials", args.trials), ("--glue-protocol", args.glue_protocol)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(args.overrides)
