"""`evaluate_finetune` (`cram finetune`): fine-tune and score a model on the user's own labelled data with the
GLUE protocols' care (fixed recipe, several seeds, median and spread), through the same machinery as GLUE.

Results folder:
    config.json                  the FinetuneConfig, the model, the data (sources, columns, label set)
    <task kind>/trial-<k>.json   one fine-tuning run (as for GLUE)
    results.json, results.md     medians and spread per metric, every trial, the label set
    model/                       with `save_model`: the best trial's fine-tuned model (Hugging Face folder,
                                 tokenizer included, label names in its config), with `finetune.json`
Trials are keyed on the model, the recipe and the data (the files' bytes, the columns, the task kind), so
re-running the same command resumes and a changed file is refused rather than mixed in. All data is read and
checked before anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from crammer.config import config_hash, to_dict
from crammer.errors import CrammerError
from crammer.eval.config import FinetuneConfig
from crammer.eval.finetune import model_identity, run_trial
from crammer.eval.spec import TaskSpec, spec_for
from crammer.eval.trials import (Job, TrialRunner, check_model, encode_job, fmt, load_finished, protocol_line,
                                 run_pending, summarize_task, task_table, write_results)
from crammer.eval.userdata import DataSpec, fingerprint, mixed_labels, read_split
from crammer.io import atomic_dir, atomic_write_json, exclusive_folder, read_json

MODEL_DIR = "model"
MODEL_MARKER = "finetune.json"  # in MODEL_DIR: which trial it is, under which key


def evaluate_finetune(model: str, data: DataSpec, train: str, eval: str, config: FinetuneConfig,
                      out_dir: str | Path, log: Callable[[str], None] = print, save_model: bool = False,
                      runner: TrialRunner = run_trial, metric: str | None = None) -> dict:
    """Fine-tune `model` on `train` for `config.trials` seeds, score each on `eval`; write and return the
    results (see module doc). `runner` runs one trial (`finetune.run_trial`'s signature); `metric` ranks the
    trials and heads the table (default: the task kind's usual one, `spec.PRIMARY_METRICS`)."""
    out_dir = Path(out_dir)
    with exclusive_folder(out_dir, "fine-tuning output folder"):  # one writer per results folder
        model = str(model)
        spec_for(data.kind, (), metric)  # an unknown --metric fails before any work
        tokenizer, device = check_model(model, config, out_dir)
        if data.kind == "token-classification" and not getattr(tokenizer, "is_fast", False):
            raise CrammerError(f"--model {model}: token classification needs a fast tokenizer (tokenizer.json)")
        train_split, labels, skipped_train = read_split(train, data, "train", None, config.skip_malformed_rows)
        if data.kind == "classification" and len(labels) < 2:
            raise CrammerError(f"--train {train}: column {data.label_column!r} has one label only ({labels[0]!r}); "
                               "a classifier needs two or more")
        if data.kind in ("classification", "multi-label") and (mixed := mixed_labels(labels)):
            log(f"warning: --train {train}: column {data.label_column!r}: {mixed}")
        eval_split, _, skipped_eval = read_split(eval, data, "eval", labels or None, config.skip_malformed_rows)
        for skipped, source in ((skipped_train, train), (skipped_eval, eval)):
            if skipped:
                log(f"{source}: skipped {skipped} malformed row(s)")
        spec = spec_for(data.kind, labels, metric)
        sources = {"train": fingerprint(train, "train"), "eval": fingerprint(eval, "eval")}
        key = config.trial_key(model_identity(model), config_hash({**to_dict(data), **sources}))
        name = data.kind
        finished = load_finished(out_dir, [name], config.trials, key)  # refused before anything is written
        saver = _BestModel(out_dir / MODEL_DIR, spec, key, tokenizer, finished[name]) if save_model else None
        described = {"kind": data.kind, "text_columns": list(data.text_columns), "label_column": data.label_column,
                     "labels": list(labels), "metric": spec.metric}
        atomic_write_json(out_dir / "config.json", {"model": model, "trial_key": key, "config": to_dict(config),
                                                    "task": described, "data": {"train": train, "eval": eval}})

        job = Job(name, spec, lambda: (train_split, {"": eval_split}))
        runs = run_pending(model, out_dir, job, finished[name], config, key, tokenizer, device, log, runner,
                           finished=saver.offer if saver else None)
        summary = summarize_task(runs, spec.primary)
        best = _best_trial(runs, spec.primary[0])
        if saver is not None and not saver.holds(best["trial"]):
            log(f"{name}: training trial {best['trial'] + 1} (seed {best['seed']}) again to save it")
            train_enc, evals = encode_job(job, config, tokenizer)
            runner(model, spec, train_enc, evals, tokenizer.pad_token_id, config, best["seed"], device,
                   desc=f"{name} trial {best['trial'] + 1} (to save)",
                   finished=lambda m, r: saver.save(best["trial"], m, r))
        results = {
            "model": model,
            "protocol": config.protocol,
            "config": to_dict(config),
            "task": described,
            "data": {"train": {"source": train, "examples": len(train_split), "skipped_rows": skipped_train,
                               "fingerprint": sources["train"]},
                     "eval": {"source": eval, "examples": len(eval_split), "skipped_rows": skipped_eval,
                              "fingerprint": sources["eval"]}},
            "tasks": {name: summary},
            "primary_metric": spec.primary[0],
            "best_trial": best["trial"],
            "saved_model": str(out_dir / MODEL_DIR) if saver is not None else None,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_results(out_dir, results, render_markdown(results))
        return results


def _best_trial(runs: list[dict], metric: str) -> dict:
    """The trial with the highest primary metric (the first of equals)."""
    return max(runs, key=lambda r: (r["metrics"][metric], -r["trial"]))


class _BestModel:
    """Keeps OUT/model the best trial so far: each new trial that beats it replaces the folder (atomically;
    a folder that is not one of ours is never replaced)."""

    def __init__(self, folder: Path, spec: TaskSpec, key: str, tokenizer, done: dict[int, dict | None]):
        self.folder, self.spec, self.key, self.tokenizer = folder, spec, key, tokenizer
        marker = folder / MODEL_MARKER
        if folder.exists() and not marker.is_file():
            raise CrammerError(f"{folder}: exists and is not a model saved by cram finetune; move it away")
        self.saved = read_json(marker) if marker.is_file() else None
        if self.saved is not None and self.saved.get("trial_key") != key:
            self.saved = None  # another recipe's model: replaced by this run's best
        finished = [r for r in done.values() if r is not None]
        self.best = _best_trial(finished, spec.primary[0])["metrics"][spec.primary[0]] if finished else None

    def holds(self, trial: int) -> bool:
        return self.saved is not None and self.saved["trial"] == trial

    def offer(self, trial: int, model: torch.nn.Module, result: dict) -> None:
        value = result["metrics"][self.spec.primary[0]]
        if self.best is None or value > self.best:
            self.best = value
            self.save(trial, model, result)

    def save(self, trial: int, model: torch.nn.Module, result: dict) -> None:
        def ours(path: Path) -> None:
            if not (path / MODEL_MARKER).is_file():
                raise CrammerError(f"{path}: exists and is not a model saved by cram finetune; move it away")

        marker = {"trial": trial, "seed": result["seed"], "metrics": result["metrics"], "trial_key": self.key,
                  "labels": list(self.spec.labels), "task": self.spec.kind}
        with atomic_dir(self.folder, check_existing=ours) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / MODEL_MARKER, marker)
        self.saved = marker


def render_markdown(results: dict) -> str:
    cfg, task, data = results["config"], results["task"], results["data"]
    name = task["kind"]
    summary = results["tasks"][name]
    labels = task["labels"]
    primary = results["primary_metric"]
    baseline = summary.get("baseline", {}).get(primary)
    lines = [
        f"# Fine-tuning results: `{results['model']}`", "",
        protocol_line(cfg, results["protocol"]), "",
        f"Task: {name}; text column(s) {', '.join(f'`{c}`' for c in task['text_columns'])}, label column "
        f"`{task['label_column']}`" + (f"; {len(labels)} labels: {', '.join(labels[:20])}"
                                       + (", ..." if len(labels) > 20 else "") if labels else "") + ".",
        f"Training data: `{data['train']['source']}` ({data['train']['examples']} examples"
        + (f", at most {cfg['max_train_examples']} used" if cfg["max_train_examples"] else "") + "); evaluation: "
        f"`{data['eval']['source']}` ({data['eval']['examples']} examples"
        + (f", at most {cfg['max_eval_examples']} used" if cfg["max_eval_examples"] else "") + ").",
        "",
        f"**{primary}: {fmt(summary['median'][primary])}** (median"
        + (f"; {'chance' if task['kind'] == 'regression' else 'majority-class baseline'} {fmt(baseline)}"
           if baseline is not None else "") + f"); best trial {results['best_trial'] + 1}" + (f", saved in `{results['saved_model']}`" if results["saved_model"] else "")
        + ".",
    ]
    lines += task_table(name, summary)
    return "\n".join(lines) + "\n"
