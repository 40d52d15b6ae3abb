"""`cram sweep`: an equal-budget experiment as one command.

Every variant x seed is an ordinary `cram pretrain` run folder, `OUT/NAME/seed-K`, trained in a subprocess on
the same corpus with the same budget (so the same validation subset and masks: those are fixed by the
corpus); member `seed-K` sets `seed=K`, its only difference from the other seeds. The first variant is the
baseline. Afterwards `crammer.lab.compare` writes OUT/compare.md and OUT/compare.html.

Re-running the same command resumes: a member whose final/pretraining.json exists is kept, an interrupted one
continues from its newest checkpoint (`--resume`). OUT/sweep.json records the budget, the corpus and every
variant's definition; a rerun that changes any of them for an existing variant is refused (a new variant name
just runs). One sweep at a time per OUT (`crammer.io.exclusive_folder`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crammer.config import split_assignment
from crammer.errors import CrammerError
from crammer.io import atomic_write_json, exclusive_folder, read_json
from crammer.lab.compare import GLUE_DIR, SWEEP_FILE, Comparison, compare
from crammer.runfiles import CHECKPOINT_DIR, CONFIG_FILE, FINAL_DIR, SUMMARY_FILE

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_CHECKPOINT_SECONDS = 60.0  # a member checkpoints at least this often (a fifth of a shorter budget)


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    overrides: tuple[str, ...]

    def definition(self) -> dict:
        return {"preset": self.preset, "overrides": list(self.overrides)}


@dataclass(frozen=True)
class Budget:
    """The budget every member gets: wall-clock seconds, or tokens (reproducible comparisons)."""

    seconds: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.tokens is None):
            raise CrammerError("give exactly one budget: --budget DURATION or --budget-tokens N")
        if (self.seconds or self.tokens or 0) <= 0:
            raise CrammerError("the budget must be positive")

    def flags(self) -> list[str]:
        return ["--budget", f"{self.seconds:g}"] if self.seconds is not None else ["--budget-tokens", str(self.tokens)]

    def record(self) -> dict:
        return {"seconds": self.seconds} if self.seconds is not None else {"tokens": self.tokens}


@dataclass(frozen=True)
class Glue:
    """`--glue TASKS`: `cram glue` (protocol `sane`) on each member's final model, into RUN_DIR/glue; its
    settings as for `cram glue` (`epochs=3`, `max_train_examples=500`)."""

    tasks: str
    glue_dir: str | None = None
    overrides: tuple[str, ...] = ()

    def config(self):
        from crammer.eval.config import make_glue_config

        where = [f"glue_dir={self.glue_dir}"] if self.glue_dir else []
        return make_glue_config("sane", [f"tasks={self.tasks}", *where, *self.overrides])


def parse_variant(text: str, default_preset: str) -> Variant:
    """`NAME[:key=value,...]`; `preset=P` picks the variant's pretraining preset. A piece without `=` continues
    the value before it (`optim.betas=0.9,0.95`)."""
    name, _, settings = text.strip().partition(":")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise CrammerError(f"variant {text!r}: its name must be letters, digits, '.', '_' or '-' (NAME:key=value,...)")
    items: list[str] = []
    for piece in settings.split(","):
        if piece.strip():
            if "=" not in piece and items:
                items[-1] += "," + piece.strip()
            else:
                items.append(piece.strip())
    preset, overrides = default_preset, []
    for item in items:
        key, value = split_assignment(item, f"setting of variant {name!r}")
        if key == "preset":
            preset = value
        else:
            overrides.append(f"{key}={value}")
    return Variant(name, preset, tuple(overrides))


def read_variants_file(path: str | Path) -> list[str]:
    """The variants of a --variants file: one a line, as after --variant; blank lines and # comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CrammerError(f"--variants {path}: cannot read it ({e.strerror or e})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_variants(variants: list[Variant], budget: Budget) -> None:
    """Each variant's config is built (typos and out-of-range values fail here, before any run starts)."""
    from crammer.train.config import make_pretrain_config

    names = [v.name for v in variants]
    if not variants:
        raise CrammerError("no variants: give at least one --variant NAME[:key=value,...] (the first is the baseline)")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise CrammerError(f"variant {duplicate!r} is given twice")
    for v in variants:
        if any(split_assignment(o)[0] == "seed" for o in v.overrides):
            raise CrammerError(f"variant {v.name!r}: seed is set per run by --seeds (seed-K uses seed=K)")
        try:
            make_pretrain_config(v.preset, v.overrides, budget_seconds=budget.seconds, budget_tokens=budget.tokens)
        except CrammerError as e:
            raise CrammerError(f"variant {v.name!r}: {e}") from None


@dataclass(frozen=True)
class Member:
    variant: Variant
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed-{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / FINAL_DIR / SUMMARY_FILE).is_file()

    @property
    def started(self) -> bool:
        return (self.run_dir / CONFIG_FILE).is_file()

    def command(self, data: Path, budget: Budget) -> list[str]:
        """The `cram pretrain` of this member; `--resume` once it has started (with no checkpoint it starts
        afresh, after checking that its recipe is unchanged)."""
        cmd = [sys.executable, "-m", "crammer", "pretrain", "--data", str(data), "--out", str(self.run_dir),
               "--preset", self.variant.preset, *budget.flags(), *(["--resume"] if self.started else []),
               f"seed={self.seed}"]
        if not any(o.startswith("checkpoint.") for o in self.variant.overrides):
            # so that a killed sweep loses at most a minute (or a fifth of the budget) of each running member
            every = MAX_CHECKPOINT_SECONDS if budget.seconds is None else min(MAX_CHECKPOINT_SECONDS, budget.seconds / 5)
            cmd.append(f"checkpoint.every_seconds={every:g}")
        return cmd + list(self.variant.overrides)


def corpus_identity(data: Path) -> dict:
    """What makes two corpora the same validation set: the recipe hash, the tokenizer, the block length."""
    from crammer.data.manifest import Manifest
    from crammer.train.checkpoint import file_digest

    manifest = Manifest.read(data)
    return {"recipe": manifest.config_hash, "seq_len": manifest.seq_len,
            "tokenizer_sha256": file_digest(data / "tokenizer.json")}


def _claim(out: Path, record: dict) -> dict:
    """Write OUT/sweep.json, merged with the record a previous run of the sweep left (its variants are kept, so
    that a later rerun with them is checked too). A changed budget, corpus or variant definition is refused."""
    path = out / SWEEP_FILE
    if path.is_file():
        before = read_json(path)
        for key, what in (("budget", "budget"), ("corpus", "corpus (recipe, tokenizer or block length)")):
            if before.get(key) != record[key]:
                raise CrammerError(f"{path}: this sweep ran with another {what}: {before.get(key)} (now "
                                   f"{record[key]}); use the same or a new --out")
        for name, definition in record["variants"].items():
            old = before["variants"].get(name)
            if old is not None and old != definition:
                raise CrammerError(f"{path}: variant {name!r} was {_show(old)}, now {_show(definition)}; give the "
                                   "new definition another name, or use a new --out")
        # A rerun with fewer variants (one added later, say) keeps the others in the record and in the order that
        # `cram compare SWEEP_DIR` reports: this run's order, then the earlier variants it left out.
        order = [*record["order"], *(name for name in before["order"] if name not in record["order"])]
        record = {**record, "order": order, "variants": {**before["variants"], **record["variants"]}}
    atomic_write_json(path, record)
    return record


def _show(definition: dict) -> str:
    return ",".join([f"preset={definition['preset']}", *definition["overrides"]])


def _devices(parallel: int) -> tuple[list[str], int]:
    """(GPUs to place runs on, threads per run): on GPUs one run a GPU (at most as many at a time as there are
    GPUs); on a CPU the cores split evenly, since small models gain more from two single-core runs than from
    one two-core run. An OMP_NUM_THREADS the user set caps it."""
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
        return ids[:torch.cuda.device_count()], 0
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return [], min(threads, int(limit)) if limit.isdigit() and int(limit) > 0 else threads  # the user's limit stands


def run_members(members: list[Member], data: Path, budget: Budget, parallel: int,
                log: Callable[[str], None], gpus: list[str] | None = None) -> dict[str, int]:
    """Run the members not finished yet, `parallel` at a time; each one's output goes to `seed-K.log` beside its
    folder. Returns the failed ones (name -> exit status). A SIGTERM or Ctrl-C stops the running members
    (they checkpoint) before it ends the sweep. `gpus`: the GPU ids to place members on, one each (default: the
    visible ones; none on a CPU)."""
    found, threads = _devices(parallel)
    gpus = found if gpus is None else gpus
    if gpus and parallel > len(gpus):
        log(f"sweep: {len(gpus)} GPU(s): running {len(gpus)} at a time, one a GPU")
        parallel = len(gpus)
    pending = [m for m in members if not m.finished]
    for m in members:
        if m.finished:
            log(f"sweep: {m.name}: finished before, kept")
    running: dict[subprocess.Popen, tuple[Member, str | None, float]] = {}
    failed: dict[str, int] = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                member = pending.pop(0)
                env = dict(os.environ)
                gpu = None
                if gpus:
                    gpu = next(g for g in gpus if g not in {r[1] for r in running.values()})
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                else:
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
                member.run_dir.parent.mkdir(parents=True, exist_ok=True)
                how = ("resuming from its newest checkpoint" if any((member.run_dir / CHECKPOINT_DIR).glob("step-*"))
                       else "restarting (no checkpoint yet)" if member.started else "starting")
                log(f"sweep: {member.name}: {how}" + (f" on GPU {gpu}" if gpus else f" with {threads} thread(s)"))
                with open(member.run_dir.parent / f"{member.run_dir.name}.log", "ab") as out:
                    process = subprocess.Popen(member.command(data, budget), stdout=out, stderr=subprocess.STDOUT,
                                               env=env)
                running[process] = (member, gpu, time.monotonic())
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                member, _, started = running.pop(process)
                seconds = time.monotonic() - started
                if process.returncode == 0:
                    log(f"sweep: {member.name}: finished ({seconds:.1f} s)")
                else:
                    failed[member.name] = process.returncode
                    log(f"sweep: {member.name}: failed with exit status {process.returncode} after {seconds:.0f} s; "
                        f"see {member.run_dir}.log")
    except BaseException:
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # each member checkpoints and exits
        for process in running:
            process.wait()
        raise
    return failed


def sweep(data: str | Path, out: str | Path, variants: list[Variant], budget: Budget, seeds: int = 1,
          parallel: int = 1, glue: Glue | None = None, command: list[str] | None = None,
          log: Callable[[str], None] = print) -> Comparison:
    """Run every variant x seed (see the module doc), then compare them; returns the table (`Comparison.rows`,
    the baseline first) and writes OUT/compare.md, OUT/compare.html and OUT/compare.json. With `glue`, each
    finished member's final model is fine-tuned on those GLUE tasks too (kept trials are not run again), and
    the report adds the GLUE table.

    A member that fails is reported and the others go on; the sweep then raises a CrammerError naming it
    (after writing the report of the members that finished)."""
    from crammer.data.output import sigterm_as_interrupt

    data, out = Path(data).resolve(), Path(out)
    if seeds < 1 or parallel < 1:
        raise CrammerError("--seeds and --parallel must be at least 1")
    check_variants(variants, budget)
    glue_config = glue.config() if glue is not None else None
    with exclusive_folder(out, "sweep folder"), sigterm_as_interrupt():
        out.mkdir(parents=True, exist_ok=True)
        record = _claim(out, {
            "command": command or [], "data": str(data), "corpus": corpus_identity(data), "budget": budget.record(),
            "seeds": seeds, "order": [v.name for v in variants],
            "variants": {v.name: v.definition() for v in variants}})
        members = [Member(v, k, out / v.name / f"seed-{k}") for k in range(seeds) for v in variants]
        started = time.monotonic()
        failed = run_members(members, data, budget, parallel, log)
        log(f"sweep: members done in {time.monotonic() - started:.1f} s")
        finished = [m.run_dir for m in members if m.finished]
        if glue_config is not None:
            from crammer.eval.glue import evaluate_glue

            for run_dir in finished:
                started = time.monotonic()
                evaluate_glue(str(run_dir / FINAL_DIR), glue_config, run_dir / GLUE_DIR, log=lambda line: None)
                log(f"sweep: {run_dir.relative_to(out)}: GLUE {','.join(glue_config.tasks)} done "
                    f"({time.monotonic() - started:.1f} s)")
        result = None
        if finished:
            overrides = {name: [f"preset={d['preset']}", *d["overrides"]] for name, d in record["variants"].items()}
            baseline = next(m.run_dir for v in variants for m in members if m.variant == v and m.finished)
            started = time.monotonic()
            result = compare(finished, baseline=baseline, out=out, command=command, overrides=overrides)
            log(f"sweep: report {out / 'compare.md'} written in {time.monotonic() - started:.1f} s")
        if failed:
            raise CrammerError("sweep members failed: " + ", ".join(
                f"{name} (exit status {code}, log {out / name}.log)" for name, code in failed.items())
                + "; the report covers the others; rerun the same command to retry them")
        assert result is not None
        return result
