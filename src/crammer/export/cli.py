"""`cram export`. Building the parser imports nothing heavy; the command imports torch when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

TARGETS = ("modernbert", "bert", "onnx")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model folder to native Hugging Face (modernbert, bert) or ONNX, verified",
        description="Write MODEL_DIR as a folder that needs neither crammer nor remote code, and check its outputs "
                    "against the crammer model: `modernbert` (models of the modernbert preset) and `bert` (the "
                    "original architecture) are native Hugging Face folders, within 1e-5; `onnx` takes every "
                    "architecture (encoder.onnx and, for an MLM, mlm.onnx), checked in ONNX Runtime within 1e-4.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a crammer model folder (e.g. RUN_DIR/final)")
    p.add_argument("--to", required=True, choices=TARGETS, help="the target format")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="the folder to write (replaced if it is "
                   "a model folder)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from crammer.export.run import export

    print(export(args.model_dir, args.to, args.out))
    return 0
