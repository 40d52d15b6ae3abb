"""The `cram` command line: a thin dispatcher; each stage package owns its subcommands.

Each module in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` on them. Registering imports only configs (no torch, no transformers), so `cram --help` is quick;
a command imports what it runs. A CrammerError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from crammer import __version__
from crammer.errors import CrammerError

COMMAND_MODULES = [
    "crammer.data.cli",  # data prepare, data inspect
    "crammer.train.cli",  # pretrain, plot, bench, plan
    "crammer.eval.cli",  # glue
    "crammer.pipeline.cli",  # run
    "crammer.report.cli",  # report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cram",
        description="Pretrain a BERT-style model on one GPU in a fixed budget, evaluate it on GLUE.",
    )
    parser.add_argument("--version", action="version", version=f"crammer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CrammerError as e:
        print(f"cram: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a SIGTERM turned into one (SignalInterrupt)
        print("cram: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))  # the shell's "ended by signal N"
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
