"""`evaluate_glue`: every task x trial of a protocol, resumable, summarised in `results.md`; one client of
the fine-tuning machinery in `trials` (which `cram finetune` shares).

Results folder:
    config.json                 the GlueConfig and the model
    <task>/trial-<k>.json       one fine-tuning run: metrics (0-100), seed, epochs, steps, times
    results.json                per task: all trials, the medians and spread; the GLUE columns and score
    results.md                  the same as tables, with reference rows
Trial files made with another model (the content of its folder's config and weights, or its hub name:
`finetune.model_identity`) or another recipe (`GlueConfig.trial_key`) are an error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from crammer.config import to_dict
from crammer.errors import CrammerError
from crammer.eval.config import GlueConfig
from crammer.eval.finetune import model_identity, run_trial
from crammer.eval.metrics import glue_numbers, glue_score, mean_score
from crammer.eval.tasks import GLUE_SCORE_COLUMNS, REFERENCE_SCORES, TASKS, load_task, missing_files
from crammer.eval.trials import (Job, TrialRunner, check_model, fmt, load_finished, protocol_line, run_pending,
                                 summarize_task, task_table, trial_path, write_results)
from crammer.io import atomic_write_json, exclusive_folder

__all__ = ["evaluate_glue", "render_markdown", "summarize", "trial_path"]

def evaluate_glue(model: str, config: GlueConfig, out_dir: str | Path, log: Callable[[str], None] = print,
                  runner: TrialRunner = run_trial) -> dict:
    """Fine-tune and score `model` on `config.tasks`; write and return the results (see module doc).
    `runner` runs one trial (`finetune.run_trial`'s signature)."""
    out_dir = Path(out_dir)
    with exclusive_folder(out_dir, "GLUE output folder"):  # one writer per results folder
        model = str(model)
        tokenizer, device = check_model(model, config, out_dir)
        key = config.trial_key(model_identity(model))
        # Trials left by another model or recipe are refused before anything in out_dir is overwritten.
        finished = load_finished(out_dir, config.tasks, config.trials, key)
        if config.glue_dir is not None:
            _check_task_files(config.glue_dir, [name for name in config.tasks if None in finished[name].values()])
        atomic_write_json(out_dir / "config.json", {"model": model, "trial_key": key, "config": to_dict(config)})

        trials: dict[str, list[dict]] = {}
        for name in config.tasks:
            def load(name=name):
                data = load_task(name, config.glue_dir, config.skip_malformed_rows)
                return data.train, data.evals

            job = Job(name, TASKS[name].spec, load)
            trials[name] = run_pending(model, out_dir, job, finished[name], config, key, tokenizer, device, log, runner)
            results = summarize(model, config, trials)
            write_results(out_dir, results, render_markdown(results))
        return results


def _check_task_files(glue_dir: str, tasks: list[str]) -> None:
    """One error naming every missing folder or file, instead of failing after the tasks before it ran."""
    missing = {name: paths for name in tasks if (paths := missing_files(name, glue_dir))}
    if missing:
        found = ", ".join(str(p) for paths in missing.values() for p in paths)
        raise CrammerError(f"--glue-dir {glue_dir}: no data for {', '.join(missing)} ({found} not found); "
                           "leave those tasks out of --tasks")


def summarize(model: str, config: GlueConfig, trials: dict[str, list[dict]]) -> dict:
    tasks = {name: summarize_task(runs, TASKS[name].spec.primary) for name, runs in trials.items()}
    numbers = glue_numbers({name: t["median"] for name, t in tasks.items()})
    return {
        "model": model,
        "protocol": config.protocol,
        "config": to_dict(config),
        "tasks": tasks,
        "glue_numbers": numbers,
        "columns": list(GLUE_SCORE_COLUMNS),  # so readers of results.json (the model card) need not import eval
        "references": [list(row) for row in REFERENCE_SCORES],
        "glue_score": glue_score(numbers),
        "mean_over_tasks_run": mean_score(numbers),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render_markdown(results: dict) -> str:
    cfg = results["config"]
    numbers = results["glue_numbers"]
    lines = [f"# GLUE results: `{results['model']}`", "", protocol_line(cfg, results["protocol"])]
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
        lines += task_table(name, task)
    return "\n".join(lines) + "\n"
