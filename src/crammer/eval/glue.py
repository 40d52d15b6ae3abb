"""`evaluate_glue`: every task x trial of a protocol, resumable, summarised in `results.md`.

Results folder:
    config.json                 the GlueConfig and the model
    <task>/trial-<k>.json       one fine-tuning run: metrics (0-100), seed, epochs, steps, times
    results.json                per task: all trials and the medians; the GLUE columns and score
    results.md                  the same as tables, with reference rows
Each trial file is written atomically when its run ends, so an interrupted evaluation resumes at the
first missing trial; trial files made with another model (the content of its folder's config and weights,
or its hub name: `finetune.model_identity`) or another recipe (`GlueConfig.trial_key`) are an error.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from crammer.config import to_dict
from crammer.errors import CrammerError
from crammer.eval.config import GlueConfig
from crammer.eval.finetune import (check_max_length, encode, load_model_config, load_tokenizer, model_identity,
                                   run_trial)
from crammer.eval.metrics import glue_numbers, glue_score, mean_score
from crammer.eval.tasks import GLUE_SCORE_COLUMNS, TASKS, Split, load_task, missing_files
from crammer.io import atomic_write_json, atomic_write_text, read_json
from crammer.runtime import resolve_device

# GLUE dev averages (9 numbers, GLUE-sane rules) to compare against; per-task numbers are not reproduced.
REFERENCE_SCORES = (
    ("BERT-base, fully trained", 80.9),
    ("crammed BERT, 1x A6000 for 24 h", 80.7),
    ("BERT-base from scratch, 3060 Ti for 100 h", 72.7),
)


def trial_path(out_dir: Path, task: str, trial: int) -> Path:
    return out_dir / task / f"trial-{trial}.json"


def evaluate_glue(model: str, config: GlueConfig, out_dir: str | Path,
                  log: Callable[[str], None] = print) -> dict:
    """Fine-tune and score `model` on `config.tasks`; write and return the results (see module doc)."""
    out_dir = Path(out_dir)
    model = str(model)
    # Every check that can fail comes before the first trial: the model, its settings, the machine, the data.
    tokenizer = load_tokenizer(model)  # also rejects a folder that is not a model
    if tokenizer.pad_token_id is None:
        raise CrammerError(f"--model {model}: its tokenizer has no padding token")
    check_max_length(config.max_length, load_model_config(model), f"--model {model}")
    device = resolve_device(config.device, "glue config: device")
    key = config.trial_key(model_identity(model))
    # Trials left by another model or recipe are refused before anything in out_dir is overwritten.
    finished = {name: {k: _load_trial(out_dir, name, k, key) for k in range(config.trials)} for name in config.tasks}
    if config.glue_dir is not None:
        _check_task_files(config.glue_dir, [name for name in config.tasks if None in finished[name].values()])
    atomic_write_json(out_dir / "config.json", {"model": model, "trial_key": key, "config": to_dict(config)})

    trials: dict[str, list[dict]] = {}
    for name in config.tasks:
        done = finished[name]
        pending = [k for k, result in done.items() if result is None]
        if pending:
            log(f"{name}: loading data")
            data = load_task(name, config.glue_dir, config.skip_malformed_rows)
            train = encode(tokenizer, _subset(data.train, config.max_train_examples), config.max_length)
            evals = {s: encode(tokenizer, _subset(split, config.max_eval_examples), config.max_length)
                     for s, split in data.evals.items()}
        else:
            log(f"{name}: all {config.trials} trials already done")
        for k in pending:
            seed = config.seed + k
            log(f"{name}: trial {k + 1}/{config.trials} (seed {seed}) on {len(train.labels)} examples")
            result = run_trial(model, TASKS[name], train, evals, tokenizer.pad_token_id, config, seed, device,
                               desc=f"{name} trial {k + 1}/{config.trials}")
            result = {"task": name, "trial": k, "model": model, "trial_key": key, **result}
            atomic_write_json(trial_path(out_dir, name, k), result)
            log(f"{name}: trial {k + 1}: " + ", ".join(f"{m} {v:.1f}" for m, v in result["metrics"].items()))
            done[k] = result
        trials[name] = [done[k] for k in range(config.trials)]
        results = summarize(model, config, trials)
        atomic_write_json(out_dir / "results.json", results)
        atomic_write_text(out_dir / "results.md", render_markdown(results))
    return results


def _check_task_files(glue_dir: str, tasks: list[str]) -> None:
    """One error naming every missing folder or file, instead of failing after the tasks before it ran."""
    missing = {name: paths for name in tasks if (paths := missing_files(name, glue_dir))}
    if missing:
        found = ", ".join(str(p) for paths in missing.values() for p in paths)
        raise CrammerError(f"--glue-dir {glue_dir}: no data for {', '.join(missing)} ({found} not found); "
                           "leave those tasks out of --tasks")


def _load_trial(out_dir: Path, task: str, trial: int, key: str) -> dict | None:
    path = trial_path(out_dir, task, trial)
    if not path.exists():
        return None
    result = read_json(path)
    if result.get("trial_key") != key:
        raise CrammerError(f"{path}: made with another model or recipe; use a fresh --out (or delete it)")
    return result


def _subset(split: Split, limit: int) -> Split:
    """A fixed random subset (the same for every trial and run), or the whole split when limit is 0."""
    if not limit or limit >= len(split):
        return split
    indices = np.random.default_rng(0).permutation(len(split))[:limit]
    return split.subset(sorted(indices.tolist()))


def summarize(model: str, config: GlueConfig, trials: dict[str, list[dict]]) -> dict:
    tasks = {}
    for name, runs in trials.items():
        primary = [key for _, key in TASKS[name].glue_numbers]
        keys = sorted(runs[0]["metrics"], key=lambda m: (m not in primary, m))  # the scored metric first
        tasks[name] = {
            "median": {m: statistics.median(r["metrics"][m] for r in runs) for m in keys},
            "trials": [{"trial": r["trial"], "seed": r["seed"], "metrics": r["metrics"],
                        "train_seconds": r["train_seconds"]} for r in runs],
        }
    numbers = glue_numbers({name: t["median"] for name, t in tasks.items()})
    return {
        "model": model,
        "protocol": config.protocol,
        "config": to_dict(config),
        "tasks": tasks,
        "glue_numbers": numbers,
        "glue_score": glue_score(numbers),
        "mean_over_tasks_run": mean_score(numbers),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render_markdown(results: dict) -> str:
    cfg = results["config"]
    numbers = results["glue_numbers"]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"# GLUE results: `{results['model']}`",
        "",
        f"Protocol `{results['protocol']}`: AdamW lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs, "
        f"{cfg['schedule']} schedule with {cfg['warmup_fraction']:.0%} warm-up, weight decay {cfg['weight_decay']:g}, "
        f"max length {cfg['max_length']}, dropout {cfg['dropout']:g}; scores after the last epoch; "
        f"median of {cfg['trials']} trial(s) (seeds {cfg['seed']}..{cfg['seed'] + cfg['trials'] - 1}).",
    ]
    if cfg["max_train_examples"] or cfg["max_eval_examples"]:
        lines.append(f"**Subsets**: at most {cfg['max_train_examples'] or 'all'} training and "
                     f"{cfg['max_eval_examples'] or 'all'} evaluation examples per task: not comparable to GLUE.")
    lines += [
        "",
        "## GLUE (dev)",
        "",
        "| model | " + " | ".join(GLUE_SCORE_COLUMNS) + " | GLUE |",
        "|---|" + "---:|" * (len(GLUE_SCORE_COLUMNS) + 1),
        "| **this model** | " + " | ".join(fmt(numbers.get(c)) for c in GLUE_SCORE_COLUMNS)
        + f" | **{fmt(results['glue_score'])}** |",
    ]
    lines += [f"| {name} (reference) | " + " | ".join("" for _ in GLUE_SCORE_COLUMNS) + f" | {score} |"
              for name, score in REFERENCE_SCORES]
    run = [c for c in GLUE_SCORE_COLUMNS if c in numbers]
    lines += ["", f"GLUE score: mean of the 9 numbers (MNLI-m and MNLI-mm separately): {fmt(results['glue_score'])}"
              + ("" if results["glue_score"] is not None else " (not all tasks run)") + ".",
              f"Mean over the {len(run)} number(s) run: {fmt(results['mean_over_tasks_run'])}."]
    for name, task in results["tasks"].items():
        keys = list(task["median"])
        lines += ["", f"## {name}", "", "| trial | seed | " + " | ".join(keys) + " | train time (s) |",
                  "|---|---:|" + "---:|" * (len(keys) + 1)]
        lines += [f"| {t['trial'] + 1} | {t['seed']} | " + " | ".join(fmt(t["metrics"][k]) for k in keys)
                  + f" | {t['train_seconds']:.0f} |" for t in task["trials"]]
        lines.append("| **median** | | " + " | ".join(f"**{fmt(task['median'][k])}**" for k in keys) + " | |")
    return "\n".join(lines) + "\n"
