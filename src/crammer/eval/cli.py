"""`cram glue`: fine-tune and score a model (ours or any Hugging Face encoder) on GLUE."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from crammer.eval.config import PROTOCOLS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "glue",
        help="fine-tune and score a model on GLUE (GLUE-sane protocol by default)",
        description="Fine-tune MODEL on each GLUE task for several seeds and report the medians and the GLUE "
        "score in OUT/results.md. Re-running with the same OUT resumes: finished trials are kept.",
        epilog="Overrides: key=value on any GlueConfig field, e.g. lr=3e-5 epochs=3 batch_size=32 "
        "precision=fp32 compile=true device=cpu seed=10 skip_malformed_rows=true.",
    )
    p.add_argument("--model", required=True, metavar="DIR_OR_HF_NAME",
                   help="a crammer model folder or any Hugging Face encoder (e.g. bert-base-uncased)")
    p.add_argument("--tasks", default="all", help="all (the 8 scored tasks) or a comma list of "
                   "cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli (default all)")
    p.add_argument("--glue-dir", metavar="PATH", help="local glue_data folder (CoLA/train.tsv, ...); "
                   "default: the Hugging Face hub, nyu-mll/glue")
    p.add_argument("--protocol", default="sane", choices=sorted(PROTOCOLS), help="hyper-parameter set (sane)")
    p.add_argument("--trials", type=int, metavar="N", help="seeds per task; the median is reported (5)")
    p.add_argument("--out", metavar="DIR", help="results folder (default runs/glue/<model>-<protocol>, <model> "
                   "being the last 3 parts of a local folder's path or the hub name)")
    p.add_argument("--max-train-examples", type=int, metavar="N", help="fixed random subset of each train split")
    p.add_argument("--max-eval-examples", type=int, metavar="N", help="fixed random subset of each dev split")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="GlueConfig overrides")
    p.set_defaults(func=_glue)


def _glue(args: argparse.Namespace) -> int:
    from crammer.eval.config import make_glue_config
    from crammer.eval.glue import evaluate_glue

    overrides = [f"tasks={args.tasks}"]
    for flag, key in (("glue_dir", "glue_dir"), ("trials", "trials"), ("max_train_examples", "max_train_examples"),
                      ("max_eval_examples", "max_eval_examples")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    config = make_glue_config(args.protocol, overrides + list(args.overrides))
    out = args.out or str(Path("runs") / "glue" / f"{_slug(args.model)}-{config.protocol}")
    log = lambda msg: print(f"cram glue: {msg}", file=sys.stderr)  # noqa: E731
    results = evaluate_glue(args.model, config, out, log=log)
    numbers = ", ".join(f"{col} {v:.1f}" for col, v in results["glue_numbers"].items())
    if results["glue_score"] is not None:
        print(f"{numbers}; GLUE score {results['glue_score']:.1f}")
    elif results["mean_over_tasks_run"] is not None:
        print(f"{numbers}; mean over tasks run {results['mean_over_tasks_run']:.1f}")
    print(Path(out) / "results.md")
    return 0


def _slug(model: str) -> str:
    """The default results folder's name: the last three parts of a local folder's resolved path (two
    models saved as `.../final` must not share one), the whole of a hub name (`org-name`)."""
    path = Path(model).expanduser()
    parts = path.resolve().parts[1:][-3:] if path.exists() else model.split("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p)) or "model"
