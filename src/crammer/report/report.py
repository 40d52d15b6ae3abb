"""`RUN_DIR/report.md` + `RUN_DIR/report.html`, built only from the files a run leaves on disk.

Because the report reads files (run.json, state.json, the corpus manifest, metrics.jsonl, the GLUE
results) rather than in-memory objects, `cram report RUN_DIR` can regenerate it at any time, also
for a run that is still going or that stopped half-way: missing parts are said to be missing.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from crammer.data.manifest import MANIFEST, Manifest
from crammer.errors import CrammerError
from crammer.eval.tasks import REFERENCE_SCORES, TASKS
from crammer.io import atomic_write_text, read_json
from crammer.report.document import (
    Bullets,
    Code,
    Document,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from crammer.runfiles import (
    CONFIG_FILE, METRICS_FILE, RUN_JSON, SUMMARY_FILE, RunLayout, RunState, read_metrics, training_rows, validation_rows)
from crammer.train.plot import plot_run
from crammer.units import duration, human

# The corpus counts in pipeline order: what was read, what each filter removed, what was kept.
_COUNT_ORDER = ["documents_read", "documents_bad", "documents_empty", "documents_filtered",
                "documents_deduplicated", "documents_kept", "characters_read", "tokens", "sequences"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _summary_section(doc: Document, run: dict[str, Any], state: RunState) -> None:
    config = run.get("config", {})
    items = [f"command: `{shlex.join(run.get('command', []))}`"]
    labels = {"data": "data preparation", "pretrain": "pretraining", "glue": "GLUE fine-tuning"}
    for stage, label in labels.items():
        record = state.stages.get(stage)
        if record is None:
            items.append(f"{label}: not finished")
        else:
            items.append(f"{label}: {duration(record['seconds'])} wall-clock"
                         + (" (in the invocation that finished it; the run was resumed)" if record.get("resumed") else ""))
    budget = config.get("pretrain", {}).get("budget_seconds")
    if budget:
        items.append(
            f"the budget ({duration(budget)}) applies to pretraining only, as in the cramming paper; "
            "data preparation and GLUE fine-tuning are extra and timed separately above"
        )
    doc.add(Heading("Summary"), Bullets(items))


def _data_section(doc: Document, data_dir: Path | None, tokens_trained: float | None) -> int | None:
    """Corpus statistics and epochs seen; returns the sequence length (None before the data stage)."""
    doc.add(Heading("Data"))
    if data_dir is None or not (data_dir / MANIFEST).is_file():
        doc.add(Paragraph("The prepared corpus is not there yet (data stage not finished)."))
        return None
    manifest = Manifest.read(data_dir)
    doc.add(Paragraph(f"Prepared corpus: `{data_dir}` (sequence length {manifest.seq_len}, "
                      f"vocabulary {manifest.vocab_size})."))
    ordered = sorted(_flatten(dataclasses.asdict(manifest.counts)),
                     key=lambda kv: (_COUNT_ORDER.index(kv[0]) if kv[0] in _COUNT_ORDER else 99, kv[0]))
    doc.add(Table(["quantity", "value"], [[k.replace("_", " "), _fmt(v)] for k, v in ordered]))
    if manifest.text:
        doc.add(Paragraph(f"Normalization: {manifest.text.normalization} ({manifest.text.normalization_reason}). "
                          f"Filter: {manifest.text.filter} ({manifest.text.filter_reason})."))
    if manifest.warnings:
        doc.add(Bullets([f"warning: {w}" for w in manifest.warnings]))
    corpus_tokens = manifest.num_tokens
    if tokens_trained is not None and corpus_tokens:
        epochs = tokens_trained / corpus_tokens
        doc.add(Paragraph(f"Pretraining saw {human(tokens_trained)} tokens = {epochs:.3g} epochs over the "
                          "prepared corpus" + (" (the recipe assumes at most one)." if epochs > 1 else ".")))
    return manifest.seq_len


def mean_masked_fraction(masking: dict[str, Any] | None) -> float:
    """The share of positions the MLM head scores, averaged over a run, from a saved config's `masking` section
    (keys it lacks at their defaults): `MaskingSchedule.mean_fraction`, what the trainer counts FLOPs with."""
    from crammer.config import config_defaults, with_defaults
    from crammer.train.config import MaskingConfig
    from crammer.train.masking import MaskingSchedule

    saved = with_defaults(masking or {}, config_defaults(MaskingConfig))
    known = {f.name for f in dataclasses.fields(MaskingConfig)}
    return MaskingSchedule(MaskingConfig(**{k: v for k, v in saved.items() if k in known})).mean_fraction


def model_flops_per_token(final_dir: Path, seq_len: int | None, masking: dict[str, Any] | None):
    """(config, training FLOPs/token) of the model in `final_dir` trained with `masking`; (None, None) when the
    folder has no model yet. Sequence length: the corpus's, else the model's maximum."""
    if not (final_dir / "config.json").is_file():
        return None, None
    from crammer.model import CrammedBertConfig, training_flops_per_token

    config = CrammedBertConfig.from_pretrained(str(final_dir))
    return config, training_flops_per_token(config, seq_len or config.max_position_embeddings,
                                            mean_masked_fraction(masking))


def _model_section(doc: Document, final_dir: Path, seq_len: int | None, masking: dict[str, Any] | None) -> float | None:
    """Parameters and training FLOPs/token of the final model; returns FLOPs/token (for MFU)."""
    doc.add(Heading("Model"))
    config, flops = model_flops_per_token(final_dir, seq_len, masking)
    if config is None:
        doc.add(Paragraph("No final model yet (pretraining not finished)."))
        return None
    import torch

    from crammer.model import CrammedBertForMaskedLM, count_parameters

    with torch.device("meta"):  # shapes only: counting needs no memory and no weights
        model = CrammedBertForMaskedLM(config)
    seq_len = seq_len or config.max_position_embeddings
    fraction = mean_masked_fraction(masking)
    rows = [
        ["parameters", f"{count_parameters(model) / 1e6:.2f}M"],
        ["parameters without embeddings", f"{count_parameters(model, include_embeddings=False) / 1e6:.2f}M"],
        ["layers x hidden x heads", f"{config.num_hidden_layers} x {config.hidden_size} x {config.num_attention_heads}"],
        ["vocabulary", f"{config.vocab_size:,}"],
        [f"training FLOPs/token (seq {seq_len}, {fraction:.0%} masked)", human(flops, "FLOP")],
    ]
    doc.add(Paragraph(f"Final model (a Hugging Face folder): `{final_dir}`."), Table(["quantity", "value"], rows))
    return flops


def _training_section(doc: Document, layout: RunLayout, metrics: list[dict[str, Any]],
                      flops_per_token: float | None) -> None:
    doc.add(Heading("Pretraining"))
    validation = validation_rows(metrics)
    metrics = training_rows(metrics)
    if not metrics:
        doc.add(Paragraph(f"No training metrics yet ({layout.pretrain / METRICS_FILE})."))
        return
    last = metrics[-1]
    throughput = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s") is not None]
    mfu = [m["mfu"] for m in metrics if m.get("mfu") is not None]
    rows = [
        ["optimizer steps", _fmt(last["step"])],
        ["tokens", _fmt(last["tokens"])],
        ["elapsed budget", duration(last["elapsed_s"])],
        ["last logged MLM loss", _fmt(last["loss"])],
        ["batch (sequences)", f"{last['batch_size']} = micro-batch {last['micro_batch']} x {last['accumulation']}"],
        ["median tokens/s", f"{statistics.median(throughput):,.0f}" if throughput else "n/a"],
        ["median model FLOP/s (tokens/s x training FLOPs/token)",
         human(statistics.median(throughput) * flops_per_token, "FLOP/s") if throughput and flops_per_token else "n/a"],
        ["median MFU", f"{statistics.median(mfu):.1%}" if mfu else "n/a (no known accelerator peak, e.g. on CPU)"],
    ]
    start = _starting_model(layout)
    if start is not None:
        kind = f" ({start['kind']})" if start.get("kind") else ""
        fingerprint = f", weights sha256 `{start['fingerprint'][:16]}…`" if start.get("fingerprint") else ""
        rows.insert(0, ["continued from (--init-from: a new run from its weights)",
                        f"`{start['path']}`{kind}{fingerprint}"])
    if validation and validation[0]["step"] == 0 and start is not None:
        v0 = validation[0]
        rows.append(["validation MLM loss / accuracy of the starting model (step 0)",
                     f"{_fmt(v0['val_loss'])} / {100 * v0['val_accuracy']:.2f}%"])
    if validation:
        v = validation[-1]
        rows += [[f"validation MLM loss / accuracy (step {v['step']}, {v['val_sequences']} held-out sequences)",
                  f"{_fmt(v['val_loss'])} / {100 * v['val_accuracy']:.2f}%"],
                 ["validation bits per character (compares across tokenizers and languages)",
                  _fmt(v["val_bits_per_char"]) if "val_bits_per_char" in v else "n/a (corpus prepared before it)"],
                 ["evaluation time (share of the elapsed budget)", f"{duration(v['eval_seconds'])} ({v['eval_share']:.1%})"]]
    else:
        rows.append(["validation", "none logged (a corpus without a validation split, or eval turned off)"])
    summary = layout.final / SUMMARY_FILE
    if summary.is_file():
        done = read_json(summary)
        rows += [["finished: steps, tokens, budget", f"{done['steps']:,}, {done['tokens']:,}, {duration(done['elapsed_s'])}"],
                 ["precision", str(done["precision"])], ["non-finite steps skipped", _fmt(done["nonfinite_steps"])]]
        corpora = done.get("corpora", [])
        if len(corpora) > 1:
            rows.append(["corpora (resumed on another one with the same tokenizer)",
                         "; ".join(f"{c['path']} from step {c['from_step']}" for c in corpora)])
    else:
        rows.append(["finished", "no (pretraining still running or interrupted; figures are the last logged)"])
    doc.add(Table(["quantity", "value"], rows))
    for png in plot_run(layout.pretrain, layout.plots):
        doc.add(Image(png, f"{png.stem.replace('_', ' ')} over elapsed budget time"))


def _starting_model(layout: RunLayout) -> dict[str, Any] | None:
    """The run's `--init-from` model: final/pretraining.json's record (path, kind, fingerprint) once finished,
    else the path its config names; None for a run from scratch."""
    summary = layout.final / SUMMARY_FILE
    if summary.is_file():
        return read_json(summary).get("init_from")
    config = layout.pretrain / CONFIG_FILE
    path = read_json(config).get("init_from") if config.is_file() else None
    return {"path": path} if path else None


def _glue_section(doc: Document, glue_dir: Path, state: RunState) -> None:
    doc.add(Heading("GLUE"))
    record = state.stages.get("glue")
    results_path = glue_dir / "results.json"
    if record is None and not results_path.is_file():
        doc.add(Paragraph("GLUE evaluation not run yet."))
        return
    if record is None:
        doc.add(Paragraph("GLUE evaluation still running or interrupted: the tasks finished so far."))
    skipped = (record or {}).get("skipped", {})
    if skipped:
        doc.add(Paragraph("Tasks skipped, and why (the next `cram run` with the same options retries them):"),
                Bullets([f"{TASKS[task].folder}: skipped: {why}" for task, why in skipped.items()]))
    if not results_path.is_file():
        doc.add(Paragraph("No task was evaluated."))
        return
    results = read_json(results_path)
    cfg = results["config"]
    doc.add(Paragraph(
        f"Protocol `{results['protocol']}` (one hyper-parameter set for all tasks: lr {cfg['lr']:g}, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epoch(s), score after the last epoch), median of "
        f"{cfg['trials']} trial(s) per task; spread = lowest..highest trial."))
    if cfg["max_train_examples"] or cfg["max_eval_examples"]:
        doc.add(Paragraph(
            f"Subsets: at most {cfg['max_train_examples'] or 'all'} training and {cfg['max_eval_examples'] or 'all'} "
            "evaluation examples per task, so these scores are a smoke test, not comparable to GLUE."))
    rows = []
    for task, summary in results["tasks"].items():
        for metric, median in summary["median"].items():
            values = [t["metrics"][metric] for t in summary["trials"]]
            rows.append([TASKS[task].folder, metric, f"{median:.1f}", f"{min(values):.1f}..{max(values):.1f}",
                         str(len(values))])
    doc.add(Table(["task", "metric", "median", "spread", "trials"], rows))
    score = results["glue_score"]
    rows = [["this model, GLUE score (9 numbers)", "n/a: not every task ran" if score is None else f"{score:.1f}"],
            [f"this model, mean over the {len(results['glue_numbers'])} number(s) run",
             "n/a" if results["mean_over_tasks_run"] is None else f"{results['mean_over_tasks_run']:.1f}"]]
    rows += [[f"{name} (reference)", f"{value:.1f}"] for name, value in REFERENCE_SCORES]
    doc.add(Table(["model", "GLUE dev"], rows))


def _reproduce_section(doc: Document, run: dict[str, Any]) -> None:
    doc.add(Heading("Reproducibility"))
    if not run:
        doc.add(Paragraph(f"No {RUN_JSON} in this folder: configuration and versions unknown."))
        return
    doc.add(Paragraph("Re-run the exact command below in a new folder; the resolved configuration "
                      "(every key, after preset and overrides) and the software it ran on follow."))
    doc.add(Code(shlex.join(run.get("command", [])), "bash"))
    doc.add(Code(json.dumps(run.get("config", {}), indent=2, sort_keys=True), "json"))
    doc.add(Table(["software", "version"], [[k, str(v)] for k, v in run.get("versions", {}).items()]))


def _recorded_data_dir(run_dir: Path, state: RunState) -> Path | None:
    """The corpus state.json names: relative to the run folder (absolute when outside it); folders from
    before that rule recorded it relative to the working directory."""
    if "data" not in state.stages:
        return None
    recorded = Path(state.stages["data"]["data_dir"])
    candidates = [run_dir / recorded, recorded, RunLayout(run_dir).data]
    return next((d for d in candidates if (d / MANIFEST).is_file()), candidates[0])


class _PretrainLayout(RunLayout):
    """A `cram pretrain` folder: its own root holds what a `cram run` folder keeps in `pretrain/`."""

    @property
    def pretrain(self) -> Path:
        return self.root


def _pretrain_report(run_dir: Path) -> tuple[Path, Path]:
    """The report of a plain `cram pretrain` folder: its corpus, model, curves and how it was configured."""
    layout = _PretrainLayout(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    summary = read_json(layout.final / SUMMARY_FILE) if (layout.final / SUMMARY_FILE).is_file() else None
    metrics = read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []
    data_dir = Path(summary["data"]) if summary and summary.get("data") else None

    doc = Document(f"crammer pretraining run: {run_dir.name}")
    doc.add(Heading("Summary"), Bullets([
        f"pretraining: finished ({duration(summary['elapsed_s'])} of the budget)" if summary else
        "pretraining: not finished (still running or interrupted; `--resume` continues it)",
        (f"model continued from `{config['init_from']}`" if config.get("init_from") else
         f"model preset `{config.get('model')}`") + (f" with {', '.join(config['model_overrides'])}"
                                                      if config.get("model_overrides") else ""),
        "budget: " + (duration(config["budget_seconds"]) if config.get("budget_seconds")
                      else f"{config.get('budget_tokens'):,} tokens"),
    ]))
    seq_len = None
    if data_dir is not None and (data_dir / MANIFEST).is_file():
        seq_len = _data_section(doc, data_dir, metrics[-1]["tokens"] if metrics else None)
    else:
        doc.add(Heading("Data"), Paragraph(
            f"The corpus, `{data_dir}`, is not there (moved, or named relative to another working directory)."
            if data_dir else "The corpus is named in final/pretraining.json, written when pretraining finishes."))
    flops = _model_section(doc, layout.final, seq_len, config.get("masking"))
    _training_section(doc, layout, metrics, flops)
    doc.add(Heading("Reproducibility"), Paragraph(f"The resolved configuration ({CONFIG_FILE}):"),
            Code(json.dumps(config, indent=2, sort_keys=True), "json"))
    atomic_write_text(layout.report_md, to_markdown(doc, run_dir))
    atomic_write_text(layout.report_html, to_html(doc))
    return layout.report_md, layout.report_html


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)write RUN_DIR/report.md and RUN_DIR/report.html from the files in RUN_DIR: a `cram run` folder, or a
    `cram pretrain` one; any other folder is refused (a report of nothing would read "not finished")."""

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CrammerError(f"{run_dir}: no such run folder")
    if not (run_dir / RUN_JSON).is_file():
        if (run_dir / CONFIG_FILE).is_file():
            return _pretrain_report(run_dir)
        raise CrammerError(f"{run_dir}: not a run folder (no {RUN_JSON} of `cram run`, no {CONFIG_FILE} of "
                           "`cram pretrain`)")
    layout = RunLayout(run_dir)
    run = read_json(run_dir / RUN_JSON) if (run_dir / RUN_JSON).is_file() else {}
    state = RunState.load(run_dir)
    metrics = read_metrics(layout.pretrain) if (layout.pretrain / METRICS_FILE).is_file() else []
    tokens_trained = metrics[-1]["tokens"] if metrics else None
    data_dir = _recorded_data_dir(run_dir, state)
    masking = run.get("config", {}).get("pretrain", {}).get("masking")

    doc = Document(f"crammer run: {run_dir.name}")
    _summary_section(doc, run, state)
    seq_len = _data_section(doc, data_dir, tokens_trained)
    flops_per_token = _model_section(doc, layout.final, seq_len, masking)
    _training_section(doc, layout, metrics, flops_per_token)
    _glue_section(doc, layout.glue, state)
    _reproduce_section(doc, run)

    atomic_write_text(layout.report_md, to_markdown(doc, run_dir))
    atomic_write_text(layout.report_html, to_html(doc))
    return layout.report_md, layout.report_html
