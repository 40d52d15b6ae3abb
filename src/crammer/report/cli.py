"""`cram report`: rebuild a run folder's report from its files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="(re)build RUN_DIR/report.md and report.html from the run's files")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from crammer.report.report import build_report

    md, html = build_report(args.run_dir)
    print(f"wrote {md} and {html}")
    return 0
