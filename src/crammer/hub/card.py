"""`final/README.md`: a Hugging Face model card (metadata header + the run's facts + how to load it).

`render_model_card(facts)` is a pure function of `ModelCardFacts`; `facts_from_run_files` gathers the facts from
what a run leaves on disk (final/config.json, final/pretraining.json, RUN_DIR/metrics.jsonl, the corpus
manifest, GLUE's results.json), so the card can be written after pretraining and rewritten after GLUE.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path
from typing import Any, Mapping

from crammer.data.config import PRESETS as CORPUS_PRESETS
from crammer.data.manifest import MANIFEST, Manifest
from crammer.errors import CrammerError
from crammer.io import atomic_write_text, read_json
from crammer.runfiles import METRICS_FILE, SUMMARY_FILE, read_metrics, training_rows, validation_rows
from crammer.units import duration, human

CARD_FILE = "README.md"
MARKER = "<!-- model card written by crammer (crammer.hub.card) -->"
PLACEHOLDER_ID = "path/to/this/folder"
MODEL_ID_LINE = re.compile(r'^model_id = "[^"\n]*"', re.MULTILINE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCardFacts:
    """What the card says; every field may be unknown (None / empty), the card then says so or leaves it out."""

    title: str = "crammed BERT"
    repo_id: str | None = None  # the Hub id the load snippet names (set by `cram push`)
    # the model
    architecture: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # final/config.json
    model_preset: str | None = None
    model_overrides: tuple[str, ...] = ()
    parameters: int | None = None
    # the corpus
    corpus_name: str | None = None  # a `cram data prepare` preset, else the sources
    corpus_sources: tuple[str, ...] = ()
    corpus_stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # see `corpus_statistics`
    smoke_corpus: bool = False
    # the run
    init_from: Mapping[str, Any] | None = None  # the model it was continued from: path or id, kind, fingerprint
    start_validation_loss: float | None = None  # that model's own validation loss (step 0 of the run)
    tokens_seen: int | None = None
    steps: int | None = None
    budget: str | None = None  # "24.00 h of wall clock" or "2,000,000 tokens"
    elapsed_s: float | None = None
    gpu: str | None = None
    world_size: int = 1
    precision: str | None = None
    tokens_per_s: float | None = None  # median over the logged steps
    mfu: float | None = None  # median, 0-1
    train_loss: float | None = None  # the last logged
    validation_loss: float | None = None
    validation_accuracy: float | None = None
    validation_sequences: int | None = None
    glue: Mapping[str, Any] | None = None  # results.json of `crammer.eval.glue.evaluate_glue`
    # metadata
    languages: tuple[str, ...] = ()
    license: str = "apache-2.0"
    datasets: tuple[str, ...] = ()  # Hub dataset ids


def _value(facts: ModelCardFacts | Mapping[str, Any]) -> ModelCardFacts:
    if isinstance(facts, ModelCardFacts):
        return facts
    known = {f.name for f in dataclasses.fields(ModelCardFacts)}
    unknown = sorted(set(facts) - known)
    if unknown:
        raise CrammerError(f"model card facts: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ModelCardFacts(**{k: tuple(v) if isinstance(v, list) else v for k, v in facts.items()})


def render_model_card(facts: ModelCardFacts | Mapping[str, Any]) -> str:
    """The card's text: YAML metadata (library_name, pipeline_tag, license, language, tags, datasets) then
    Markdown. `huggingface_hub.ModelCard` parses it."""
    facts = _value(facts)
    from huggingface_hub import ModelCardData  # torch-free; the YAML exactly as the Hub reads it

    metadata = ModelCardData(
        library_name="transformers", pipeline_tag="fill-mask", license=facts.license,
        language=list(facts.languages) or None, datasets=list(facts.datasets) or None,
        tags=["crammer", "cramming", "bert", "fill-mask", "masked-lm", "custom_code"],
    )
    sections = [f"---\n{metadata.to_yaml()}\n---", MARKER, f"# {facts.title}",
                (f"A BERT-style encoder pretrained from scratch on {_hardware_phrase(facts)} within a fixed budget "
                 "(\"cramming\", Geiping & Goldstein 2022) with crammer."),
                _model_section(facts), _training_section(facts), _glue_section(facts), _usage_section(facts)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _hardware_phrase(facts: ModelCardFacts) -> str:
    """What it was pretrained on, as the hardware row records it (a CPU run is no GPU run)."""
    if facts.gpu is None:
        return "one machine"
    if facts.gpu.upper() == "CPU":
        return "a CPU"
    return f"{facts.world_size} GPUs" if facts.world_size > 1 else "one GPU"


def write_model_card(folder: str | Path, facts: ModelCardFacts | Mapping[str, Any]) -> Path:
    """Write (atomically) or replace FOLDER/README.md; returns its path."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, render_model_card(facts))
    return path


def set_card_repo_id(folder: str | Path, repo_id: str) -> bool:
    """Point the load snippet of a crammer-written card at `repo_id` (what `cram push` does before uploading);
    False, touching nothing, when there is no such card."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if MARKER not in text or not MODEL_ID_LINE.search(text):
        return False
    updated = MODEL_ID_LINE.sub(f'model_id = "{repo_id}"', text)
    if updated != text:
        atomic_write_text(path, updated)
    return True


# ------------------------------------------------------------------------------------------------ sections


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| property | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _count(n: float | None) -> str:
    return "unknown" if n is None else f"{n:,.0f}"


def public_source(source: str) -> str:
    """A source as a published card names it: hub and built-in sources whole, a local path by its last part
    (the card goes public; the folders of the machine that prepared the corpus need not)."""
    if source.startswith("hf:") or source.split("::")[0] == "pydoc":
        return source
    path, _, options = source.partition("::")
    return Path(path).name + (f"::{options}" if options else "")


def _model_section(facts: ModelCardFacts) -> str:
    a = facts.architecture
    rows = []
    if a:
        shape = (f"{a.get('num_hidden_layers')} layers × {a.get('hidden_size')} hidden × "
                 f"{a.get('num_attention_heads')} heads, {str(a.get('ffn_type', 'mlp')).upper()} "
                 f"{a.get('intermediate_size')}, {a.get('norm_scheme', 'post')}-LayerNorm, "
                 f"{str(a.get('position_embedding', 'learned')).replace('_', ' ')} positions")
        rows.append(("architecture", f"`{a.get('model_type', 'crammed_bert')}`: {shape}"))
    if facts.model_preset:
        overrides = f" with `{' '.join(facts.model_overrides)}`" if facts.model_overrides else ""
        rows.append(("preset", f"`{facts.model_preset}`{overrides}"))
    if facts.parameters is not None:
        rows.append(("parameters", human(facts.parameters)))
    if a.get("vocab_size"):
        rows.append(("vocabulary", (f"{a['vocab_size']:,} WordPiece tokens; up to "
                                    f"{a.get('max_position_embeddings')} tokens per sequence")))
    return "## Model\n\n" + _table(rows) if rows else ""


def _training_section(facts: ModelCardFacts) -> str:
    rows = []
    if facts.init_from:
        start = facts.init_from
        kind = f" ({start['kind']})" if start.get("kind") else ""
        fingerprint = f", weights sha256 `{start['fingerprint']}`" if start.get("fingerprint") else ""
        rows.append(("continued from", f"`{public_source(str(start.get('path')))}`{kind}{fingerprint}: its weights "
                                       "started this run (a new budget, schedule and optimizer)"))
    if facts.corpus_name or facts.corpus_sources:
        sources = ", ".join(f"`{public_source(s)}`" for s in facts.corpus_sources)
        name = facts.corpus_name or sources
        rows.append(("corpus", name + (f" ({sources})" if facts.corpus_name and sources else "")
                     + (" — a smoke-test corpus, not a pretraining corpus" if facts.smoke_corpus else "")))
    s = facts.corpus_stats
    if s:
        if "documents_kept" in s:
            rows.append(("documents", f"{_count(s['documents_kept'])} kept of {_count(s.get('documents_read'))} read"))
        if "tokens" in s:
            blocks = f" in {_count(s.get('sequences'))} blocks of {s.get('seq_len')}" if "sequences" in s else ""
            rows.append(("corpus tokens", f"{_count(s['tokens'])}{blocks}"))
        if s.get("validation_sequences"):
            rows.append(("held out for validation", f"{_count(s['validation_sequences'])} blocks"))
        if s.get("unk_fraction") is not None:
            rows.append(("[UNK] fraction", f"{100 * s['unk_fraction']:.2f}%"))
    if facts.tokens_seen is not None:
        passes = ""
        if s.get("tokens"):
            passes = f" ({facts.tokens_seen / s['tokens']:.2f} passes over the corpus)"
        rows.append(("tokens seen", _count(facts.tokens_seen) + passes))
    if facts.steps is not None:
        rows.append(("optimizer steps", _count(facts.steps)))
    if facts.budget:
        spent = f" ({duration(facts.elapsed_s)} spent)" if facts.elapsed_s is not None else ""
        rows.append(("budget", facts.budget + spent))
    gpus = f"{facts.world_size}× " if facts.world_size > 1 else ""
    rows.append(("hardware", gpus + (facts.gpu or "not recorded")))
    if facts.precision:
        rows.append(("precision", facts.precision))
    if facts.tokens_per_s is not None:
        mfu = f", MFU {facts.mfu:.1%}" if facts.mfu is not None else ""
        rows.append(("throughput (median)", f"{facts.tokens_per_s:,.0f} tokens/s{mfu}"))
    if facts.train_loss is not None:
        rows.append(("last training MLM loss", f"{facts.train_loss:.4f}"))
    if facts.validation_loss is not None:
        accuracy = (f", accuracy {100 * facts.validation_accuracy:.2f}%"
                    if facts.validation_accuracy is not None else "")
        held_out = f" on {facts.validation_sequences:,} held-out blocks" if facts.validation_sequences else ""
        rows.append(("validation MLM loss", f"{facts.validation_loss:.4f}{accuracy}{held_out}"))
    if facts.start_validation_loss is not None:
        rows.append(("validation MLM loss of the starting model", f"{facts.start_validation_loss:.4f}"))
    return "## Pretraining\n\n" + _table(rows)


def _glue_section(facts: ModelCardFacts) -> str:
    if not facts.glue:
        return ("## GLUE\n\nNot evaluated yet (`cram glue --model FOLDER` scores it; `cram run` does so and "
                "rewrites this card).")
    glue = facts.glue  # results.json names its columns and reference rows: the card reads files, not eval
    numbers = glue.get("glue_numbers", {})
    columns = glue.get("columns") or list(numbers)
    references = glue.get("references") or []
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    cfg = glue.get("config", {})
    trials = cfg.get("trials")
    lines = ["## GLUE (dev)", "",
             f"Fine-tuned with protocol `{glue.get('protocol')}`"
             + (f", median of {trials} trial(s) per task" if trials else "") + "; scores ×100.", "",
             "| model | " + " | ".join(columns) + " | GLUE |",
             "|---|" + "---:|" * (len(columns) + 1),
             "| **this model** | " + " | ".join(fmt(numbers.get(c)) for c in columns)
             + f" | **{fmt(glue.get('glue_score'))}** |"]
    lines += [f"| {name} (reference) | " + " |" * len(columns) + f" {score} |" for name, score in references]
    if glue.get("glue_score") is None:
        lines += ["", (f"Not every task ran: mean over the {len(numbers)} number(s) run = "
                       f"{fmt(glue.get('mean_over_tasks_run'))}.")]
    if cfg.get("max_train_examples") or cfg.get("max_eval_examples"):
        lines += ["", "**Subsets** of the tasks were used: not comparable to GLUE."]
    return "\n".join(lines)


def _usage_section(facts: ModelCardFacts) -> str:
    model_id = facts.repo_id or PLACEHOLDER_ID
    export = ("\n\nIts architecture is the original BERT's: `crammer.model.to_hf_bert(folder, out)` writes a native "
              "`model_type: bert` copy that needs no remote code." if _is_original(facts.architecture) else "")
    return f"""## How to use

The modeling code travels with the weights (`trust_remote_code=True`; transformers >= 5), or `import crammer.model`
registers it:

```python
from transformers import AutoModelForSequenceClassification, pipeline

model_id = "{model_id}"
fill = pipeline("fill-mask", model=model_id, trust_remote_code=True)
print(fill("Paris is the [MASK] of France."))
classifier = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2, trust_remote_code=True)
```

Token classification, question answering and multiple choice heads load the same way
(`AutoModelForTokenClassification`, `AutoModelForQuestionAnswering`, `AutoModelForMultipleChoice`).{export}"""


def _is_original(architecture: Mapping[str, Any]) -> bool:
    """Whether the saved config is the original BERT architecture (what `to_hf_bert` exports)."""
    if architecture.get("model_type") != "crammed_bert":
        return False
    from crammer.model.presets import ORIGINAL_ARCHITECTURE

    return (all(architecture.get(k) == v for k, v in ORIGINAL_ARCHITECTURE.items() if k != "type_vocab_size")
            and architecture.get("type_vocab_size", 0) >= 1)


# ----------------------------------------------------------------------------------------------- the facts


def corpus_statistics(manifest: Manifest) -> dict[str, Any]:
    """The numbers of a prepared corpus the card shows."""
    c = manifest.counts
    return {"documents_read": c.documents_read, "documents_kept": c.documents_kept, "tokens": manifest.num_tokens,
            "sequences": manifest.num_sequences, "seq_len": manifest.seq_len, "vocab_size": manifest.vocab_size,
            "unk_fraction": manifest.unk_fraction,
            "validation_sequences": getattr(manifest, "validation_sequences", 0)}


def corpus_name(sources: tuple[str, ...]) -> str | None:
    """The `cram data prepare --preset` these sources are, if any."""
    return next((name for name, preset in CORPUS_PRESETS.items() if tuple(preset.sources) == sources), None)


def hub_datasets(sources: tuple[str, ...]) -> tuple[str, ...]:
    """Hub dataset ids of `hf:NAME[:CONFIG][@SPLIT][::options]` sources."""
    names = [s[3:].split("::")[0].split("@")[0].split(":")[0] for s in sources if s.startswith("hf:")]
    return tuple(dict.fromkeys(n for n in names if n))


def known_languages(sources: tuple[str, ...]) -> tuple[str, ...]:
    """Languages the sources name: a hub config ending in a language code (`20231101.en`, `en`), or `pydoc`
    (English). Empty when unknown: the card then leaves `language` out rather than guess."""
    found = []
    for source in sources:
        source = source.split("::")[0]
        if source == "pydoc":
            found.append("en")
        elif source.startswith("hf:") and source.count(":") >= 2:
            config = source.split(":")[2].split("@")[0]
            code = config.rsplit(".", 1)[-1]
            if re.fullmatch(r"[a-z]{2}", code):
                found.append(code)
    return tuple(dict.fromkeys(found))


def _budget(config: Mapping[str, Any]) -> str | None:
    if config.get("budget_tokens"):
        return f"{config['budget_tokens']:,} tokens"
    if config.get("budget_seconds"):
        return f"{duration(config['budget_seconds'])} of wall clock (start-up and compilation included)"
    return None


def facts_from_run_files(final_dir: str | Path, corpus_dir: str | Path | None = None,
                         glue_results: Mapping[str, Any] | str | Path | None = None, **overrides: Any
                         ) -> ModelCardFacts:
    """The facts of a pretraining run's `final/` folder, from files only.

    Reads final/config.json and final/pretraining.json (required), RUN_DIR/metrics.jsonl beside final/ (medians
    of tokens/s and MFU, the last training loss; left out when absent), the corpus manifest (`corpus_dir`, default
    the corpus pretraining.json names; left out when it has moved) and `glue_results` (the dict
    `evaluate_glue` returns, or its results.json). `overrides` set any other field (title, license, languages...).
    """
    final_dir = Path(final_dir)
    summary_path = final_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise CrammerError(f"{final_dir}: no {SUMMARY_FILE}; not the final/ folder of a finished `cram pretrain` run")
    summary = read_json(summary_path)
    architecture = read_json(final_dir / "config.json") if (final_dir / "config.json").is_file() else {}
    config = summary.get("config") or {}
    validation = summary.get("validation") or {}
    facts: dict[str, Any] = {
        "architecture": architecture, "model_preset": None if summary.get("init_from") else config.get("model"),
        "model_overrides": tuple(config.get("model_overrides") or ()), "parameters": summary.get("parameters"),
        "tokens_seen": summary.get("tokens"), "steps": summary.get("steps"), "budget": _budget(config),
        "elapsed_s": summary.get("elapsed_s"), "gpu": summary.get("gpu"),
        "world_size": summary.get("world_size") or 1, "precision": summary.get("precision"),
        "validation_loss": validation.get("loss"), "validation_accuracy": validation.get("accuracy"),
        "validation_sequences": validation.get("sequences"), "init_from": summary.get("init_from"),
    }
    if (final_dir.parent / METRICS_FILE).is_file():
        records = read_metrics(final_dir.parent)
        rows = training_rows(records)
        speed = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") is not None]
        mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        facts.update(tokens_per_s=statistics.median(speed) if speed else None,
                     mfu=statistics.median(mfu) if mfu else None, train_loss=losses[-1] if losses else None)
        first = validation_rows(records)[:1]
        if summary.get("init_from") and first and first[0]["step"] == 0:
            facts["start_validation_loss"] = first[0]["val_loss"]
    corpus = Path(corpus_dir) if corpus_dir is not None else (Path(summary["data"]) if summary.get("data") else None)
    if corpus is not None and (corpus / MANIFEST).is_file():
        manifest = Manifest.read(corpus)
        sources = tuple(manifest.sources)
        facts.update(corpus_name=corpus_name(sources), corpus_sources=sources,
                     corpus_stats=corpus_statistics(manifest), smoke_corpus=manifest.smoke_corpus,
                     datasets=hub_datasets(sources), languages=known_languages(sources))
    elif corpus_dir is not None:
        raise CrammerError(f"{corpus}: no {MANIFEST}; not a prepared corpus")
    if isinstance(glue_results, (str, Path)):
        glue_results = read_json(glue_results)
    facts["glue"] = glue_results
    return _value({**facts, **overrides})


def write_run_card(final_dir: str | Path, corpus_dir: str | Path | None = None,
                   glue_results: Mapping[str, Any] | str | Path | None = None) -> Path:
    """final/README.md from the run's files (see `facts_from_run_files`): what pretraining writes into final/, and
    `cram glue`/`cram run` rewrite with the GLUE table."""
    return write_model_card(final_dir, facts_from_run_files(final_dir, corpus_dir, glue_results))
