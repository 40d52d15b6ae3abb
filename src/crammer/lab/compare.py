"""`cram compare`: runs side by side, with a verdict on each variant against the baseline that weighs the
difference by the seeds' spread.

Runs are grouped into variants: a run folder named `seed-K` belongs to the variant named after its parent
(how `cram sweep` lays out `OUT/NAME/seed-K`), any other run folder is a variant of its own; a sweep folder
(one holding sweep.json) stands for all its members, a `cram run` folder for its pretraining. The first variant is the baseline unless `baseline`
names a run.

Only runs measured on the same validation set compare: the same prepared corpus (its recipe hash and
tokenizer digest, as the run recorded them, see `crammer.train.resume.corpus_record`) and the same number of
validation sequences; other runs are refused (the masks of the validation subset are the same for every run,
whatever masking it trained with: `crammer.train.validation.VALIDATION_MASKING`). Runs with other budgets are
compared, and the report says so.

The verdict rule (lower loss is better). With at least two seeds on both sides, let d = median(variant) -
median(baseline) of the final validation loss, and noise = the larger of the two spreads, spread = max - min
over seeds: **better** if d < -noise, **worse** if d > noise, else **within noise**. With one seed on either
side there is no noise estimate, and the verdict says so instead of guessing.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crammer.config import changed_keys
from crammer.errors import CrammerError
from crammer.io import atomic_write_json, atomic_write_text, read_json
from crammer.report.document import Bullets, Code, Document, Heading, Image, Paragraph, Table, to_html, to_markdown
from crammer.runfiles import (
    CHECKPOINT_DIR, CONFIG_FILE, FINAL_DIR, METRICS_FILE, RUN_JSON, SUMMARY_FILE, RunLayout, read_metrics,
    training_rows,
    validation_rows)
from crammer.units import duration, human

SWEEP_FILE = "sweep.json"  # a sweep folder's record (see crammer.lab.sweep)
COMPARE_MD, COMPARE_HTML, COMPARE_JSON = "compare.md", "compare.html", "compare.json"
GLUE_DIR = "glue"  # where `cram sweep --glue` puts a member's GLUE results: RUN_DIR/glue/results.json
ONE_SEED = "one seed: no noise estimate"
# Settings that never change what a run learns: left out of "differs from the baseline".
_NOT_RECIPE = ("seed", "config_hash", "checkpoint", "logging")
_SEED_DIR = re.compile(r"seed-(\d+)")


@dataclass
class Member:
    """One run folder, read from its files."""

    path: Path
    variant: str
    seed: int | None
    config: dict[str, Any]
    finished: bool
    val_loss: float
    val_accuracy: float
    val_bits_per_char: float | None
    val_sequences: int
    tokens_per_s: float | None
    flops_per_token: float | None  # training FLOPs per token of its final model (None before it has one)
    steps: int
    tokens: int
    elapsed_s: float
    corpus: dict[str, Any]
    curve: list[tuple[float, int, float]]  # (elapsed_s, tokens, val_loss) of every validation row
    glue: dict[str, float] | None  # RUN_DIR/glue/results.json's GLUE numbers (medians over trials), if any
    glue_columns: list[str] = field(default_factory=list)


@dataclass
class VariantRow:
    """One line of the table: a variant over its seeds (median, and min..max as the spread)."""

    variant: str
    seeds: int
    finished: int
    val_loss: float
    val_loss_min: float
    val_loss_max: float
    val_accuracy: float
    val_accuracy_min: float
    val_accuracy_max: float
    val_bits_per_char: float | None
    tokens_per_s: float | None
    flops_per_token: float | None
    steps: float
    tokens: float
    elapsed_s: float
    delta_nats: float | None  # median minus the baseline's median; None for the baseline itself
    noise_nats: float | None  # the larger seed spread of the two; None with one seed on either side
    verdict: str
    overrides: list[str] | None  # as the sweep defined the variant (None outside a sweep)
    differs: list[str]  # the settings in which its runs differ from the baseline's first run
    members: list[dict[str, Any]] = field(default_factory=list)
    glue: dict[str, float] | None = None  # GLUE column -> median over seeds (each a median over trials)


@dataclass
class Comparison:
    """What `compare` found: the table as data (`rows`, the baseline first) and what the report notes."""

    rows: list[VariantRow]
    notes: list[str]
    command: list[str]
    sweep_commands: list[list[str]] = field(default_factory=list)  # how the sweep folders compared were made

    @property
    def baseline(self) -> VariantRow:
        return self.rows[0]

    def row(self, variant: str) -> VariantRow:
        return next(r for r in self.rows if r.variant == variant)

    def markdown_table(self) -> str:
        """The validation table (and the GLUE table, when the runs were evaluated) in Markdown."""
        doc = Document("")
        doc.add(_table(self.rows))
        glue = _glue_table(self.rows)
        if glue is not None:
            doc.add(glue)
        return to_markdown(doc, Path(".")).split("\n", 2)[2].strip()


def verdict(losses: list[float], baseline: list[float]) -> tuple[str, float | None]:
    """(verdict, noise) of a variant's final validation losses against the baseline's (the rule above)."""
    if len(losses) < 2 or len(baseline) < 2:
        return ONE_SEED, None
    d = statistics.median(losses) - statistics.median(baseline)
    noise = max(max(losses) - min(losses), max(baseline) - min(baseline))
    return ("better" if d < -noise else "worse" if d > noise else "within noise"), noise


# ----------------------------------------------------------------------------------------------- reading runs
def expand(paths: list[str | Path]) -> list[tuple[Path, str | None]]:
    """Run folders with their variant name where a sweep names it: a sweep folder becomes its members, in the
    order of its variants and seeds."""
    out: list[tuple[Path, str | None]] = []
    for path in map(Path, paths):
        if (path / SWEEP_FILE).is_file():
            record = read_json(path / SWEEP_FILE)
            for name in record["order"]:
                seeds = sorted((d for d in (path / name).glob("seed-*") if _SEED_DIR.fullmatch(d.name)),
                               key=lambda d: int(d.name[5:]))
                out += [(d, name) for d in seeds if _evaluated(d)]  # mid-sweep: members not measured yet wait
        elif (path / RUN_JSON).is_file():  # a `cram run` folder: its pretraining, named after the folder
            out.append((RunLayout(path).pretrain, path.name))
        else:
            out.append((path, None))
    if not out:
        raise CrammerError(f"no run folders in {', '.join(map(str, paths))}")
    names = [name or _default_name(run) for run, name in out]
    for i, (run, name) in enumerate(out):
        # two plain run folders of the same name (runs/a/bert, runs/b/bert) are two variants, not two seeds
        if name is None and not _SEED_DIR.fullmatch(run.name) and names.count(names[i]) > 1:
            out[i] = (run, f"{run.parent.name}/{run.name}")
    return out


def _evaluated(run: Path) -> bool:
    """A sweep member that has a validation row to compare (one just started has none yet)."""
    return (run / CONFIG_FILE).is_file() and (run / METRICS_FILE).is_file() and bool(validation_rows(read_metrics(run)))


def _default_name(run: Path) -> str:
    """A run folder named seed-K is a seed of the variant named after its parent; any other, a variant."""
    return run.parent.name if _SEED_DIR.fullmatch(run.name) else run.name


def read_member(path: Path, variant: str | None = None) -> Member:
    """A run folder's final numbers: the last validation row of metrics.jsonl (what final/pretraining.json
    records as its validation), the median of the logged tokens/s, the steps and tokens trained."""
    if not (path / CONFIG_FILE).is_file():
        raise CrammerError(f"{path}: not a `cram pretrain` run folder (no {CONFIG_FILE})")
    records = read_metrics(path)
    validation, training = validation_rows(records), training_rows(records)
    if not validation:
        raise CrammerError(f"{path}: no validation rows in its metrics (a corpus without a validation split, or "
                           "eval turned off): nothing to compare")
    summary_path = path / FINAL_DIR / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else None
    corpus = _corpus_record(path, summary)
    last = validation[-1]
    throughput = [r["tokens_per_s"] for r in training if r.get("tokens_per_s") is not None]
    progress = summary or (training[-1] if training else last)
    glue_path = path / GLUE_DIR / "results.json"
    glue = read_json(glue_path) if glue_path.is_file() else None
    seed_dir = _SEED_DIR.fullmatch(path.name)
    config = read_json(path / CONFIG_FILE)
    from crammer.report.report import model_flops_per_token  # here: the report module brings matplotlib along

    _, flops = model_flops_per_token(path / FINAL_DIR, corpus.get("seq_len"), config.get("masking"))
    return Member(
        path=path, variant=variant or _default_name(path),
        seed=int(seed_dir.group(1)) if seed_dir else None, config=config, flops_per_token=flops,
        finished=summary is not None, val_loss=last["val_loss"], val_accuracy=last["val_accuracy"],
        val_bits_per_char=last.get("val_bits_per_char"), val_sequences=last["val_sequences"],
        tokens_per_s=statistics.median(throughput) if throughput else None, steps=progress["steps" if summary else "step"],
        tokens=progress["tokens"], elapsed_s=progress["elapsed_s"], corpus=corpus,
        curve=[(r["elapsed_s"], r["tokens"], r["val_loss"]) for r in validation],
        glue=None if glue is None else {**glue["glue_numbers"], "mean": glue["mean_over_tasks_run"]},
        glue_columns=[] if glue is None else [*glue["columns"], "mean"])


def _corpus_record(path: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """The corpus the run was last trained (and validated) on: final/pretraining.json's, else its newest
    checkpoint's."""
    if summary is not None and summary.get("corpora"):
        return summary["corpora"][-1]
    states = sorted((path / CHECKPOINT_DIR).glob("step-*/state.json"), key=lambda p: int(p.parent.name[5:]))
    for state in reversed(states):
        try:
            corpus = json.loads(state.read_text()).get("corpus")
        except (OSError, ValueError):
            continue
        if corpus:
            return corpus
    raise CrammerError(f"{path}: no record of the corpus it was trained on yet (no final/{SUMMARY_FILE}, no "
                       "checkpoint); compare it once it has one")


def _check_same_validation(members: list[Member]) -> None:
    """One line naming the runs whose validation set is not the first run's."""
    def key(m: Member) -> tuple:
        return m.corpus.get("tokenizer_sha256"), m.corpus.get("recipe"), m.corpus.get("seq_len"), m.val_sequences

    first = key(members[0])
    other = [m for m in members if key(m) != first]
    if other:
        def what(m: Member) -> str:
            return (f"corpus {m.corpus.get('path')} (recipe {m.corpus.get('recipe')}, tokenizer "
                    f"{str(m.corpus.get('tokenizer_sha256'))[:12]}, {m.val_sequences} validation sequences)")
        raise CrammerError(
            f"runs validated on another validation set than {members[0].path}'s {what(members[0])}: "
            + "; ".join(f"{m.path}: {what(m)}" for m in other) + "; compare runs on the same prepared corpus")


# ----------------------------------------------------------------------------------------------- the table
def compare(runs: list[str | Path], baseline: str | Path | None = None, out: str | Path | None = None,
            command: list[str] | None = None, overrides: dict[str, list[str]] | None = None) -> Comparison:
    """Compare run folders (or sweep folders); write the report into `out` when given.

    Returns the table as data (`Comparison.rows`, the baseline first). `overrides` (variant -> its `key=value`
    settings) is what a sweep defined; without it the report lists how each variant's config differs.
    """
    members = []
    for path, name in expand(runs):
        members.append(read_member(path, name))
    _check_same_validation(members)
    sweeps = [read_json(Path(p) / SWEEP_FILE) for p in runs if (Path(p) / SWEEP_FILE).is_file()]
    if overrides is None:
        overrides = {name: [f"preset={d['preset']}", *d["overrides"]]
                     for record in sweeps for name, d in record["variants"].items()}
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(m.variant, []).append(m)
    if baseline is not None:
        wanted = Path(baseline).resolve()
        base = next((m.variant for m in members if m.path.resolve() == wanted or m.path.resolve().parent == wanted),
                    None)
        if base is None:
            raise CrammerError(f"--baseline {baseline}: not one of the runs compared")
        groups = {base: groups.pop(base), **groups}
    base_members = next(iter(groups.values()))
    rows = [_row(name, group, base_members, overrides.get(name)) for name, group in groups.items()]
    rows[0].verdict, rows[0].delta_nats, rows[0].noise_nats = "baseline", None, None
    command = command or ["cram", "compare", *map(str, runs)]
    sweep_commands = [r["command"] for r in sweeps if r.get("command") and r["command"] != command]
    result = Comparison(rows, _notes(members), command, sweep_commands)
    if out is not None:
        write_report(result, groups, Path(out))
    return result


def _row(name: str, group: list[Member], base: list[Member], overrides: list[str] | None) -> VariantRow:
    median = statistics.median
    losses, accuracies = [m.val_loss for m in group], [m.val_accuracy for m in group]
    base_losses = [m.val_loss for m in base]
    label, noise = verdict(losses, base_losses)
    bits = [m.val_bits_per_char for m in group if m.val_bits_per_char is not None]
    throughput = [m.tokens_per_s for m in group if m.tokens_per_s is not None]
    return VariantRow(
        variant=name, seeds=len(group), finished=sum(m.finished for m in group),
        val_loss=median(losses), val_loss_min=min(losses), val_loss_max=max(losses),
        val_accuracy=median(accuracies), val_accuracy_min=min(accuracies), val_accuracy_max=max(accuracies),
        val_bits_per_char=median(bits) if len(bits) == len(group) else None,
        tokens_per_s=median(throughput) if throughput else None,
        flops_per_token=median(flops) if (flops := [m.flops_per_token for m in group if m.flops_per_token]) else None,
        steps=median(m.steps for m in group),
        tokens=median(m.tokens for m in group), elapsed_s=median(m.elapsed_s for m in group),
        delta_nats=median(losses) - median(base_losses), noise_nats=noise, verdict=label, overrides=overrides,
        differs=_differences(base[0].config, group[0].config),
        members=[{k: v for k, v in asdict(m).items() if k not in ("config", "curve", "corpus", "glue_columns")}
                 | {"path": str(m.path)} for m in group],
        glue=_glue_medians(group))


def _glue_medians(group: list[Member]) -> dict[str, float] | None:
    """Each GLUE number's median over the variant's seeds, where every seed has it (None without GLUE)."""
    if any(m.glue is None for m in group):
        return None
    columns = [c for c in group[0].glue_columns if all(m.glue.get(c) is not None for m in group)]
    return {c: statistics.median(m.glue[c] for m in group) for c in columns}


def _differences(base: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """`key=value (baseline: value)` for every recipe setting in which `config` differs from `base`."""
    out = []
    for key in changed_keys(base, config):
        if key.split(".")[0] in _NOT_RECIPE:
            continue
        out.append(f"{key}={_lookup(config, key)} (baseline {_lookup(base, key)})")
    return out


def _lookup(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _notes(members: list[Member]) -> list[str]:
    """What differs between the runs besides the variants' recipes, in so many words."""
    notes = []
    budgets = {(m.config.get("budget_seconds"), m.config.get("budget_tokens")) for m in members}
    if len(budgets) > 1:
        notes.append("The runs differ in budget (" + "; ".join(
            f"{m.path}: {_budget(m.config)}" for m in members) + "): a longer budget alone lowers the loss.")
    unfinished = [str(m.path) for m in members if not m.finished]
    if unfinished:
        notes.append(f"Not finished (figures are the last validation so far): {', '.join(unfinished)}.")
    return notes


def _budget(config: dict[str, Any]) -> str:
    if config.get("budget_tokens"):
        return f"{config['budget_tokens']:,} tokens"
    return duration(config.get("budget_seconds") or 0.0) + " wall clock"


# ----------------------------------------------------------------------------------------------- the report
def _spread(low: float, high: float, digits: int = 4) -> str:
    return f"{low:.{digits}f}..{high:.{digits}f}"


def _table(rows: list[VariantRow]) -> Table:
    bits = any(r.val_bits_per_char is not None for r in rows)
    header = ["variant", "seeds", "val loss (median)", "spread", "val accuracy %", *(["bits/char"] if bits else []),
              "tokens/s", "FLOPs/token", "steps", "tokens", "Δ vs baseline (nats)", "verdict"]
    body = []
    for r in rows:
        body.append([
            r.variant, str(r.seeds) + ("" if r.finished == r.seeds else f" ({r.seeds - r.finished} unfinished)"),
            f"{r.val_loss:.4f}", _spread(r.val_loss_min, r.val_loss_max),
            f"{100 * r.val_accuracy:.2f} ({_spread(100 * r.val_accuracy_min, 100 * r.val_accuracy_max, 2)})",
            *([f"{r.val_bits_per_char:.4f}" if r.val_bits_per_char is not None else "n/a"] if bits else []),
            f"{r.tokens_per_s:,.0f}" if r.tokens_per_s is not None else "n/a",
            human(r.flops_per_token) if r.flops_per_token else "n/a", f"{r.steps:,.0f}", human(r.tokens),
            "—" if r.delta_nats is None else f"{r.delta_nats:+.4f}" + (
                "" if r.noise_nats is None else f" (noise {r.noise_nats:.4f})"),
            f"**{r.verdict}**" if r.verdict in ("better", "worse") else r.verdict,
        ])
    return Table(header, body)


def _glue_table(rows: list[VariantRow]) -> Table | None:
    """Variants x GLUE numbers, for the variants whose every seed was evaluated (None if none was)."""
    rows = [r for r in rows if r.glue]
    if not rows:
        return None
    columns = [c for c in rows[0].glue if all(c in r.glue for r in rows)]
    return Table(["variant (GLUE dev)", *columns], [[r.variant, *(f"{r.glue[c]:.1f}" for c in columns)] for r in rows])


RULE = ("Verdict: with two or more seeds on both sides, d = median(variant) − median(baseline) of the final "
        "validation loss, noise = the larger of the two seed spreads (max − min); **better** if d < −noise, "
        "**worse** if d > noise, else **within noise**. With one seed on either side: "
        f"\"{ONE_SEED}\". Lower loss is better; the loss is in nats per masked token.")


def write_report(result: Comparison, groups: dict[str, list[Member]], out: Path) -> tuple[Path, Path]:
    """OUT/compare.md, a self-contained OUT/compare.html (plots embedded), OUT/compare.json (the table)."""
    from crammer.lab.plot import plot_validation

    out.mkdir(parents=True, exist_ok=True)
    doc = Document("crammer compare: " + ", ".join(r.variant for r in result.rows))
    doc.add(Heading("Result"), Paragraph(
        f"Baseline `{result.baseline.variant}`. Final validation MLM loss and accuracy on the corpus's fixed "
        "held-out subset (the same sequences and masks for every run), the median over seeds with its spread "
        "(lowest..highest seed); tokens/s is the median of each run's logged throughput; FLOPs/token is a training "
        "step's model FLOPs per token (6N + attention + the MLM head on the masked share; optimizer work such as "
        "Muon's is not counted), the numerator of MFU."), _table(result.rows),
        Paragraph(RULE))
    if result.notes:
        doc.add(Bullets(result.notes))
    glue = _glue_table(result.rows)
    if glue is not None:
        doc.add(Heading("GLUE"), Paragraph(
            "Each model fine-tuned with `cram glue`'s protocol (see each run's glue/results.md); per task the "
            "median over trials, then the median over the variant's seeds; mean = over the numbers run."), glue)
    doc.add(Heading("Validation loss"))
    for png, caption in plot_validation(groups, out / "plots"):
        doc.add(Image(png, caption))
    doc.add(Heading("Variants"))
    items = []
    for r in result.rows:
        what = f"`{' '.join(r.overrides)}`" if r.overrides is not None else "(runs given by folder)"
        differs = "; ".join(f"`{d}`" for d in r.differs) if r.differs else "nothing (the baseline's recipe)"
        items.append(f"`{r.variant}`: {what}; differs from the baseline in: {differs}")
    doc.add(Bullets(items))
    doc.add(Heading("Runs"), Table(
        ["variant", "seed", "run folder", "val loss", "val accuracy %", "tokens/s", "steps", "tokens", "elapsed"],
        [[r.variant, "-" if m["seed"] is None else str(m["seed"]), f"`{m['path']}`", f"{m['val_loss']:.4f}",
          f"{100 * m['val_accuracy']:.2f}", f"{m['tokens_per_s']:,.0f}" if m["tokens_per_s"] else "n/a",
          f"{m['steps']:,}", f"{m['tokens']:,}", duration(m["elapsed_s"]) + ("" if m["finished"] else " (unfinished)")]
         for r in result.rows for m in r.members]))
    doc.add(Heading("Reproducibility"), Code("\n".join(map(shlex.join, [*result.sweep_commands, result.command])),
                                             "bash"))
    md, html = out / COMPARE_MD, out / COMPARE_HTML
    atomic_write_text(md, to_markdown(doc, out))
    atomic_write_text(html, to_html(doc))
    atomic_write_json(out / COMPARE_JSON, {"command": result.command, "sweep_commands": result.sweep_commands,
                                           "notes": result.notes,
                                           "rows": [asdict(r) for r in result.rows]})
    return md, html
