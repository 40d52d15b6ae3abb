"""`cram glue` and `cram finetune`: fine-tune and score a model (ours or any Hugging Face encoder) on GLUE or
on the user's own labelled data."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from crammer.eval.config import PROTOCOLS
from crammer.eval.spec import TASK_KINDS


def register(subparsers) -> None:
    _register_glue(subparsers)
    _register_finetune(subparsers)


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR_OR_HF_NAME",
                   help="a crammer model folder or any Hugging Face encoder (e.g. bert-base-uncased)")


def _protocol_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default="sane", choices=sorted(PROTOCOLS), help="hyper-parameter set (sane)")


def _register_glue(subparsers) -> None:
    p = subparsers.add_parser(
        "glue",
        help="fine-tune and score a model on GLUE (GLUE-sane protocol by default)",
        description="Fine-tune MODEL on each GLUE task for several seeds and report the medians and the GLUE "
        "score in OUT/results.md. Re-running with the same OUT resumes: finished trials are kept.",
        epilog="Overrides: key=value on any GlueConfig field, e.g. lr=3e-5 epochs=3 batch_size=32 "
        "precision=fp32 compile=true device=cpu seed=10 skip_malformed_rows=true.",
    )
    _model_argument(p)
    p.add_argument("--tasks", default="all", help="all (the 8 scored tasks) or a comma list of "
                   "cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli (default all)")
    p.add_argument("--glue-dir", metavar="PATH", help="local glue_data folder (CoLA/train.tsv, ...); "
                   "default: the Hugging Face hub, nyu-mll/glue")
    _protocol_argument(p)
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
    _update_model_card(args.model, results, log)
    numbers = ", ".join(f"{col} {v:.1f}" for col, v in results["glue_numbers"].items())
    if results["glue_score"] is not None:
        print(f"{numbers}; GLUE score {results['glue_score']:.1f}")
    elif results["mean_over_tasks_run"] is not None:
        print(f"{numbers}; mean over tasks run {results['mean_over_tasks_run']:.1f}")
    print(Path(out) / "results.md")
    return 0


def _update_model_card(model: str, results: dict, log) -> None:
    """A `cram pretrain` final/ folder's model card gains the GLUE table (other models are left as they are)."""
    from crammer.errors import CrammerError
    from crammer.hub.card import write_run_card

    folder = Path(model).expanduser()
    if not folder.is_dir():
        return
    try:
        path = write_run_card(folder, glue_results=results)
    except CrammerError:  # not the final/ folder of a finished pretraining run
        return
    log(f"model card updated with the GLUE table: {path}")


def _slug(model: str) -> str:
    """The default results folder's name: the last three parts of a local folder's resolved path (two
    models saved as `.../final` must not share one), the whole of a hub name (`org-name`)."""
    path = Path(model).expanduser()
    parts = path.resolve().parts[1:][-3:] if path.exists() else model.split("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p)) or "model"


def _register_finetune(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune and score a model on your own labelled data (GLUE-sane protocol by default)",
        description="Fine-tune MODEL on TRAIN for several seeds, score each trial on EVAL, and report the "
        "median and spread in OUT/results.md. Re-running with the same OUT resumes: finished trials are kept.",
        epilog="Data: .csv, .tsv, .jsonl/.json, .parquet (optionally .gz/.xz/.zst/.bz2), CoNLL-style "
        ".conll/.iob/.bio/.txt for token classification, or hf:NAME[:CONFIG][@SPLIT]. Overrides: key=value on "
        "any FinetuneConfig field, e.g. lr=3e-5 epochs=3 batch_size=32 max_length=256 skip_malformed_rows=true.",
    )
    _model_argument(p)
    p.add_argument("--train", required=True, metavar="FILE|hf:NAME[@SPLIT]", help="training data")
    p.add_argument("--eval", required=True, metavar="FILE|hf:NAME[@SPLIT]",
                   help="evaluation data (its labels must occur in the training data)")
    p.add_argument("--task", default="classification", choices=TASK_KINDS, help="label kind (classification)")
    p.add_argument("--text-column", action="append", metavar="NAME",
                   help="text column; twice for text pairs (default text; tokens for token classification)")
    p.add_argument("--label-column", metavar="NAME", help="label column (default label; tags for token "
                   "classification)")
    _protocol_argument(p)
    p.add_argument("--trials", type=int, metavar="N", help="seeds; the median is reported (5)")
    p.add_argument("--out", metavar="DIR", help="results folder (default runs/finetune/<model>-<train file>-"
                   "<protocol>)")
    p.add_argument("--save-model", action="store_true", help="save the best trial's fine-tuned model in OUT/model")
    p.add_argument("--metric", metavar="NAME", help="the metric that ranks trials and heads the table: accuracy "
                   "(default), macro_f1 or mcc for classification; pearson (default) or spearman; micro_f1 "
                   "(default) or macro_f1 for multi-label; entity_f1 (default) or token_accuracy")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="FinetuneConfig overrides")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from crammer.eval.config import make_finetune_config
    from crammer.eval.custom import evaluate_finetune
    from crammer.eval.userdata import DataSpec

    overrides = [f"trials={args.trials}"] if args.trials is not None else []
    config = make_finetune_config(args.protocol, overrides + list(args.overrides))
    data = DataSpec(args.task, tuple(args.text_column or ()), args.label_column)
    train_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.train.split("@")[0]).name.split(".")[0]) or "data"
    out = args.out or str(Path("runs") / "finetune" / f"{_slug(args.model)}-{train_name}-{config.protocol}")
    log = lambda msg: print(f"cram finetune: {msg}", file=sys.stderr)  # noqa: E731
    results = evaluate_finetune(args.model, data, args.train, args.eval, config, out, log=log,
                                save_model=args.save_model, metric=args.metric)
    summary = results["tasks"][data.kind]
    print(", ".join(f"{m} {v:.1f}" for m, v in summary["median"].items()) + f" (median of {config.trials})")
    print(Path(out) / "results.md")
    return 0
