"""The `cram` command line: a thin dispatcher; each stage package owns its subcommands.

Each module in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` on them. Registering imports only configs (no torch, no transformers), so `cram --help` is quick;
a command imports what it runs. A CrammerError becomes one line on stderr and exit status 2, and so does a
full disk wherever it is met.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import stat
import sys

from crammer import __version__
from crammer.errors import CrammerError
from crammer.io import LOW_SPACE_BYTES, disk_full_cause, free_bytes
from crammer.progress import quiet_third_party_bars

COMMAND_MODULES = [
    "crammer.data.cli",  # data prepare, data inspect
    "crammer.pipeline.cli",  # pretrain (training + its model card), run (the whole chain)
    "crammer.train.cli",  # plot, bench, validate, plan
    "crammer.eval.cli",  # glue, finetune
    "crammer.report.cli",  # report
    "crammer.hub.cli",  # push
    "crammer.export.cli",  # export
    "crammer.lab.cli",  # sweep, compare
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
    quiet_third_party_bars()  # before any Hugging Face library is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CrammerError as e:
        _say(f"cram: error: {e}")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a SIGTERM turned into one (SignalInterrupt)
        print("cram: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))  # the shell's "ended by signal N"
    except Exception as e:
        full = disk_full_cause(e)
        if full is None:
            raise
        # A full disk met outside crammer.io's writes (an appended log, standard output) is no bug either.
        _say(f"cram: error: no space left on device while writing {_failed_file(full)}")
        return 2
    return int(result or 0)


def _say(line: str) -> None:
    """One line on stderr in one write: under torchrun every rank may say it at once into one pipe, and print()'s
    separate write of the newline let two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _failed_file(e: BaseException) -> str:
    """The file a failed write named; else standard output if it sits on a full disk (it is then pointed at
    /dev/null, so that the interpreter's last flush does not fail once more); else what is known."""
    filename = getattr(e, "filename", None)
    if filename is not None:
        return str(filename)
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return "a file (not named by the failing write)"
    full = (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 7)  # /dev/full
            or stat.S_ISREG(st.st_mode) and (free_bytes(f"/proc/self/fd/{fd}") or 0) < LOW_SPACE_BYTES)
    if not full:
        return "a file (not named by the failing write)"
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return "standard output"


if __name__ == "__main__":
    raise SystemExit(main())
