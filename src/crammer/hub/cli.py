"""`cram push`: publish a model folder on the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser("push", help="upload a model folder (e.g. RUN_DIR/pretrain/final) to the Hugging Face Hub",
                          description="Upload MODEL_DIR to the Hub in one commit. The token comes from HF_TOKEN or "
                                      "`hf auth login`; offline or without a token nothing is uploaded.")
    push.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    push.add_argument("--repo-id", required=True, metavar="NAME", help="OWNER/NAME (or NAME under your account)")
    push.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    push.add_argument("--revision", metavar="BRANCH", help="the branch to commit to (created if missing; default main)")
    push.add_argument("--message", metavar="TEXT", help="the commit message")
    push.set_defaults(func=_push)


def _push(args: argparse.Namespace) -> int:
    from crammer.hub.push import push_folder

    url = push_folder(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                      message=args.message)
    print(f"cram push: uploaded {args.model_dir} -> {url}")
    return 0
