"""The one fine-tuning machinery behind `cram glue` and `cram finetune`: checks before any work, trials over
seeds, resume, medians and spread, the per-task results tables.

A results folder holds `<task>/trial-<k>.json` (one fine-tuning run each: metrics 0-100, seed, epochs, steps,
times), written atomically when its run ends, so an interrupted evaluation resumes at the first missing
trial; a trial file made under another key (another model, recipe, or for `cram finetune` other data) is
refused before anything in the folder is overwritten.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from crammer.errors import CrammerError
from crammer.eval.batching import Encoded, encode
from crammer.eval.config import FinetuneConfig
from crammer.eval.finetune import check_max_length, load_model_config, load_tokenizer, run_trial
from crammer.eval.metrics import baseline_metrics
from crammer.eval.spec import TaskSpec
from crammer.eval.tasks import Split
from crammer.io import atomic_write_json, atomic_write_text, read_json
from crammer.runtime import resolve_device

TrialRunner = Callable[..., dict]  # `finetune.run_trial`'s signature


@dataclass
class Job:
    """One task to fine-tune on: its results subfolder, its description, and its data, read only when a
    trial is pending (a task whose trials are all done needs no files)."""

    name: str
    spec: TaskSpec
    load: Callable[[], tuple[Split, dict[str, Split]]]  # (train, {eval split name: split})


def trial_path(out_dir: Path, task: str, trial: int) -> Path:
    return Path(out_dir) / task / f"trial-{trial}.json"


def check_model(model: str, config: FinetuneConfig, out_dir: Path):
    """(tokenizer, device): every check of the model and the machine that can fail comes before the first
    trial (and before any file is written; the results' config.json must not land on the model's)."""
    if Path(model).expanduser().is_dir() and Path(out_dir).expanduser().resolve() == Path(model).expanduser().resolve():
        raise CrammerError(f"--out {out_dir} is the model's folder: its config.json would be overwritten; "
                           "choose another --out")
    tokenizer = load_tokenizer(model)  # also rejects a folder that is not a model
    if tokenizer.pad_token_id is None:
        raise CrammerError(f"--model {model}: its tokenizer has no padding token")
    check_max_length(config.max_length, load_model_config(model), f"--model {model}",
                     setting=f"{config.WHERE}: max_length")
    return tokenizer, resolve_device(config.device, f"{config.WHERE}: device")


def load_finished(out_dir: Path, names: Sequence[str], trials: int, key: str) -> dict[str, dict[int, dict | None]]:
    """The finished trials of each task (None where a trial is still to run); trials made under another key
    are an error."""
    return {name: {k: _load_trial(out_dir, name, k, key) for k in range(trials)} for name in names}


def _load_trial(out_dir: Path, task: str, trial: int, key: str) -> dict | None:
    path = trial_path(out_dir, task, trial)
    if not path.exists():
        return None
    result = read_json(path)
    if result.get("trial_key") != key:
        config = read_json(out_dir / "config.json") if (out_dir / "config.json").is_file() else {}
        old = "adam_betas" not in config.get("config", {"adam_betas": None})
        why = ("; it predates the protocols' AdamW betas and eps (sane now uses 0.9/0.98 and 1e-6, as cramming)"
               if old else "")
        raise CrammerError(f"{path}: made with another model, recipe or data{why}; use a fresh --out "
                           "(or delete the folder to redo its trials)")
    return result


def subset(split: Split, limit: int) -> Split:
    """A fixed random subset (the same for every trial and run), or the whole split when limit is 0."""
    if not limit or limit >= len(split):
        return split
    indices = np.random.default_rng(0).permutation(len(split))[:limit]
    return split.subset(sorted(indices.tolist()))


def encode_job(job: Job, config: FinetuneConfig, tokenizer) -> tuple[Encoded, dict[str, Encoded]]:
    """The job's data, subset and tokenized once for all its trials."""
    train_split, eval_splits = job.load()
    train = encode(tokenizer, subset(train_split, config.max_train_examples), config.max_length, job.spec)
    return train, {name: encode(tokenizer, subset(split, config.max_eval_examples), config.max_length, job.spec)
                   for name, split in eval_splits.items()}


def run_pending(model: str, out_dir: Path, job: Job, done: dict[int, dict | None], config: FinetuneConfig,
                key: str, tokenizer, device, log: Callable[[str], None], runner: TrialRunner = run_trial,
                finished: Callable | None = None) -> list[dict]:
    """Run the job's missing trials (seeds config.seed + k), each written when it ends; all trials in order.
    `finished(trial, model, result)` sees each new fine-tuned model (see `run_trial`)."""
    pending = [k for k, result in done.items() if result is None]
    if not pending:
        log(f"{job.name}: all {config.trials} trials already done")
        return [done[k] for k in sorted(done)]
    log(f"{job.name}: loading data")
    train, evals = encode_job(job, config, tokenizer)
    baseline = baseline_of(job.spec, evals)
    for k in pending:
        seed = config.seed + k
        log(f"{job.name}: trial {k + 1}/{config.trials} (seed {seed}) on {len(train)} examples")
        hook = None if finished is None else (lambda m, r, k=k: finished(k, m, r))
        result = runner(model, job.spec, train, evals, tokenizer.pad_token_id, config, seed, device,
                        desc=f"{job.name} trial {k + 1}/{config.trials}", finished=hook)
        result = {"task": job.name, "trial": k, "model": model, "trial_key": key, **result, "baseline": baseline}
        atomic_write_json(trial_path(out_dir, job.name, k), result)
        log(f"{job.name}: trial {k + 1}: " + ", ".join(f"{m} {v:.1f}" for m, v in result["metrics"].items()))
        if _single_class(result):
            log(f"{job.name}: warning: trial {k + 1} predicted one class for every evaluation example: it learned no "
                "more than the class balance (majority-class baseline: " + ", ".join(
                    f"{m} {v:.1f}" for m, v in baseline.items()) + ")")
        done[k] = result
    return [done[k] for k in sorted(done)]


def baseline_of(spec: TaskSpec, evals: dict[str, Encoded]) -> dict[str, float]:
    """The baseline's metrics on each evaluation split (see `metrics.baseline_metrics`), named as a trial's."""
    out = {}
    for name, data in evals.items():
        values = baseline_metrics(spec.metric, data.targets, spec.labels)
        out.update({f"{k}_{name}" if name else k: v for k, v in values.items()})
    return out


def _single_class(result: dict) -> bool:
    """Whether the trial predicted one class (tag) for every example of an evaluation split."""
    return 1 in result.get("classes_predicted", {}).values()


def summarize_task(runs: list[dict], primary: Sequence[str]) -> dict:
    """Median and spread (min, max, standard deviation over the trials) of each metric, the primary ones first;
    the baseline of the evaluation data, and the trials that predicted a single class."""
    keys = sorted(runs[0]["metrics"], key=lambda m: (m not in primary, m))
    values = {m: [r["metrics"][m] for r in runs] for m in keys}
    baseline = runs[0].get("baseline") or {}  # trials written before baselines were recorded have none
    return {
        "median": {m: statistics.median(v) for m, v in values.items()},
        "spread": {m: {"min": min(v), "max": max(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                   for m, v in values.items()},
        "baseline": {m: baseline[m] for m in keys if m in baseline},
        "single_class_trials": [r["trial"] for r in runs if _single_class(r)],
        "trials": [{"trial": r["trial"], "seed": r["seed"], "metrics": r["metrics"],
                    "train_seconds": r["train_seconds"]} for r in runs],
    }


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def task_table(name: str, task: dict) -> list[str]:
    """A task's Markdown section: one row per trial, the median, the spread."""
    keys = list(task["median"])
    lines = ["", f"## {name}", "", "| trial | seed | " + " | ".join(keys) + " | train time (s) |",
             "|---|---:|" + "---:|" * (len(keys) + 1)]
    lines += [f"| {t['trial'] + 1} | {t['seed']} | " + " | ".join(fmt(t["metrics"][k]) for k in keys)
              + f" | {t['train_seconds']:.0f} |" for t in task["trials"]]
    lines.append("| **median** | | " + " | ".join(f"**{fmt(task['median'][k])}**" for k in keys) + " | |")
    if "spread" in task and len(task["trials"]) > 1:
        lines.append("| min–max (std) | | " + " | ".join(
            f"{fmt(task['spread'][k]['min'])}–{fmt(task['spread'][k]['max'])} ({task['spread'][k]['std']:.1f})"
            for k in keys) + " | |")
    baseline = task.get("baseline")
    if baseline:
        chance = all(k.startswith(("pearson", "spearman")) for k in baseline)
        lines.append(f"| {'chance' if chance else 'majority-class baseline'} | | "
                     + " | ".join(fmt(baseline.get(k)) for k in keys) + " | |")
    single = task.get("single_class_trials")
    if single:
        lines += ["", f"**Warning**: trial(s) {', '.join(str(t + 1) for t in single)} predicted one class for every "
                  "evaluation example: such a model learned no more than the class balance (compare the "
                  "majority-class baseline row)."]
    return lines


def protocol_line(cfg: dict, protocol: str) -> str:
    """What every results.md says first: the recipe the numbers come from."""
    betas = cfg.get("adam_betas", (0.9, 0.999))
    return (f"Protocol `{protocol}`: AdamW lr {cfg['lr']:g} (betas {betas[0]:g}/{betas[1]:g}, eps "
            f"{cfg.get('adam_eps', 1e-8):g}, no clipping), batch {cfg['batch_size']}, {cfg['epochs']} epochs, "
            f"{cfg['schedule']} schedule with {cfg['warmup_fraction']:.0%} warm-up, weight decay "
            f"{cfg['weight_decay']:g}, max length {cfg['max_length']}, dropout {cfg['dropout']:g}; scores after the "
            f"last epoch; median of {cfg['trials']} trial(s) (seeds {cfg['seed']}..{cfg['seed'] + cfg['trials'] - 1}).")


def write_results(out_dir: Path, results: dict, markdown: str) -> None:
    atomic_write_json(Path(out_dir) / "results.json", results)
    atomic_write_text(Path(out_dir) / "results.md", markdown)
