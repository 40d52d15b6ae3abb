"""`cram run`: raw text -> prepared corpus -> budgeted pretraining -> GLUE -> report, in one folder.

Each stage is skipped when its result is complete, so re-running the same command after a crash or
a kill continues where it stopped: data preparation reuses its cached corpus, pretraining resumes
from its last checkpoint with the budget clock continuing, GLUE keeps finished trials, and the
report is rebuilt from the files. The budget is the pretraining budget, as in the cramming paper;
data preparation and GLUE fine-tuning are extra and timed separately in the report.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from crammer.config import apply_overrides, config_defaults, parse_duration, pick_preset, to_dict, with_defaults
from crammer.data.config import PRESETS as DATA_PRESETS
from crammer.data.config import CorpusConfig
from crammer.data.prepare import is_up_to_date, prepare
from crammer.errors import CrammerError
from crammer.eval.config import GlueConfig, make_glue_config
from crammer.eval.finetune import check_max_length
from crammer.eval.glue import evaluate_glue, trial_path
from crammer.eval.tasks import load_task, missing_files
from crammer.hub.card import write_run_card
from crammer.io import read_json
from crammer.model import make_config
from crammer.model.presets import check_positions
from crammer.pipeline.presets import RUN_PRESETS
from crammer.pipeline.pretrain import pretrain
from crammer.pipeline.state import write_run_record
from crammer.report.report import build_report
from crammer.runfiles import SUMMARY_FILE, RunLayout, RunState, relative_to_run
from crammer.runtime import resolve_device
from crammer.train.checkpoint import latest_checkpoint
from crammer.train.config import PRESETS as PRETRAIN_PRESETS
from crammer.train.config import PretrainConfig
from crammer.train.distributed import Distributed, ranks_sharing, shared_run_folder
from crammer.train.init_from import StartingModel
from crammer.train.setup import check_micro_batch


@dataclass(frozen=True)
class RunConfig:
    """The resolved config of every stage: what run.json stores and the report prints. Overrides reach a
    stage by its prefix (`data.vocab_size=16384`, `pretrain.optim.lr=5e-4`, `pretrain.model.X=...`,
    `glue.epochs=3`), through the same typed parser as every other config."""

    preset: str
    data: CorpusConfig
    pretrain: PretrainConfig
    glue: GlueConfig

    FIXED_KEYS = {"preset": "choose it with --preset"}


def make_run_config(
    preset: str,
    out: Path,
    sources: Sequence[str] = (),
    budget: str | None = None,
    glue_dir: str | None = None,
    tasks: str | None = None,
    trials: int | None = None,
    overrides: Sequence[str] = (),
    glue_protocol: str | None = None,
    init_from: str | None = None,
) -> RunConfig:
    """A run preset + command-line options + `data.X=`/`pretrain.X=`/`glue.X=` overrides (which win over the
    options, except --budget). `init_from` (or `pretrain.init_from=`) starts pretraining from that model; the corpus
    is then prepared with its tokenizer unless `data.tokenizer` names one (which must be the same)."""
    names = pick_preset(RUN_PRESETS, preset, "run preset")
    data = pick_preset(DATA_PRESETS, names.data, "data preset")
    data = dataclasses.replace(data, out=str(RunLayout(out).data), sources=tuple(sources) or data.sources)
    glue_options = [f"glue_dir={glue_dir}"] if glue_dir else []
    glue_options += [f"tasks={tasks}"] if tasks else []
    glue_options += [f"trials={trials}"] if trials is not None else []
    glue = make_glue_config(glue_protocol or names.glue_protocol, [*names.glue_overrides, *glue_options])
    pretrain_preset = pick_preset(PRETRAIN_PRESETS, names.pretrain, "pretrain preset")
    if init_from is not None:
        pretrain_preset = dataclasses.replace(pretrain_preset, init_from=init_from)
    config = apply_overrides(RunConfig(preset, data, pretrain_preset, glue), overrides)
    budget_s = parse_duration(budget or names.budget)
    pretrain = dataclasses.replace(config.pretrain, budget_seconds=budget_s, budget_tokens=None).validate()
    data = config.data
    if pretrain.init_from and data.tokenizer is None:  # the starting model's token ids
        data = dataclasses.replace(data, tokenizer=pretrain.init_from)
    return check_run_config(dataclasses.replace(config, data=data, pretrain=pretrain), out)


def check_run_config(config: RunConfig, out: Path) -> RunConfig:
    """Catch what would otherwise fail only after hours of data preparation or pretraining.

    Each stage validates its own keys when its config is built; this checks what only shows when the
    stages meet: the corpus's sequence length and GLUE's max_length against the model's positions, a
    micro-batch on a machine that cannot auto-size one (unless `out` already holds the final model), and the
    GLUE device.
    """
    seq_len = config.data.seq_len
    if config.pretrain.init_from:  # its architecture; positions it cannot stretch to data.seq_len are refused here
        start = StartingModel.resolve(config.pretrain.init_from)
        model = start.model_config(config.pretrain.model_settings, seq_len, "data.seq_len")
        model_name = f"--init-from {start.source}"
    else:
        model = make_config(config.pretrain.model, config.data.vocab_size, config.pretrain.model_settings)
        model_name = f"the {config.pretrain.model!r} model preset"
    check_positions(seq_len, model, "data.seq_len", model_name,
                    f"lower data.seq_len or set pretrain.model.max_position_embeddings={seq_len}")
    if not (RunLayout(out).final / SUMMARY_FILE).is_file():  # GLUE and the report may run on a CPU
        check_micro_batch(config.pretrain, torch.cuda.is_available(), prefix="pretrain.")
    check_max_length(config.glue.max_length, model, model_name, setting="glue.max_length")
    resolve_device(config.glue.device, "glue.device")
    return config


def run(config: RunConfig, out: Path, command: Sequence[str]) -> Path:
    """Run (or continue) every unfinished stage in `out`; returns the path of report.md.

    Under `torchrun` every rank runs this, on one machine or several: the run folder must be one folder all see
    (global rank 0 holds it and writes it); the lowest rank that sees the corpus folder prepares it while the
    others that see it wait (so a node-local `data.out` is prepared once per node), all ranks pretrain together
    (DDP), and rank 0 alone fine-tunes on GLUE and writes the report.
    """
    layout = RunLayout(Path(out))
    job = Distributed.from_env()
    try:
        with shared_run_folder(layout.root, job):
            return _run_stages(config, layout, job, command)
    finally:
        job.close()


def recorded_config(config: RunConfig, run_dir: Path) -> dict:
    """The config as run.json holds it: the corpus path relative to the run folder when it lies inside, so that
    a moved or copied run folder is still the same experiment."""
    recorded = to_dict(config)
    recorded["data"]["out"] = relative_to_run(config.data.out, run_dir)
    return recorded


def _run_stages(config: RunConfig, layout: RunLayout, job: Distributed, command: Sequence[str]) -> Path:
    state = RunState.load(layout.root)
    if job.is_main:
        layout.root.mkdir(parents=True, exist_ok=True)
        # Until a stage has finished, nothing in the folder depends on the config: a corrected command
        # (a typo fixed after a failed start) may take the folder over.
        write_run_record(layout.root, recorded_config(config, layout.root), list(command), replace=not state.stages,
                         defaults=config_defaults(RunConfig))

    # the lowest rank that sees the corpus's folder prepares it for the ranks that see it too
    sharing = ranks_sharing(Path(config.data.out).expanduser().parent, job, create=True)
    prepares = job.rank == min(sharing, default=job.rank)
    data_dir = _data_stage(config, layout, state, write_state=job.is_main) if prepares else _wait_for_data(config)
    final = _pretrain_stage(config, data_dir, layout, state, write_state=job.is_main)
    job.close()  # GLUE and the report are rank 0's alone
    if not job.is_main:
        return layout.report_md
    _glue_stage(config, final, layout, state)

    started = time.monotonic()
    md, html = build_report(layout.root)
    state.finish("report", time.monotonic() - started)
    print(f"[report] {md} and {html}")
    return md


def _data_stage(config: RunConfig, layout: RunLayout, state: RunState, write_state: bool) -> Path:
    """Always asks `prepare`, which returns at once when the recipe and input files are unchanged."""
    print(f"[data] {', '.join(config.data.sources)} -> {layout.data}")
    started = time.monotonic()
    data_dir = Path(prepare(config.data))
    if write_state and not state.done("data"):
        state.finish("data", time.monotonic() - started, data_dir=relative_to_run(data_dir, layout.root))
    return data_dir


def _wait_for_data(config: RunConfig, poll_s: float = 2.0) -> Path:
    """The ranks that do not prepare the corpus wait for it (its folder appears atomically; torchrun ends us if the
    rank preparing it fails).

    The test is prepare's own cache test, input files included: an older corpus of the same recipe that rank
    0 is rebuilding because a source changed is not taken.
    """
    while not is_up_to_date(config.data):
        time.sleep(poll_s)
    return Path(config.data.out).expanduser()


def _pretrain_stage(config: RunConfig, data_dir: Path, layout: RunLayout, state: RunState, write_state: bool) -> Path:
    """Skipped when RUN_DIR/pretrain/final exists (it appears atomically, only when complete)."""
    summary = layout.final / SUMMARY_FILE
    if summary.is_file():
        trained_with = with_defaults(read_json(summary).get("config"), config_defaults(PretrainConfig))
        if trained_with != to_dict(config.pretrain):
            raise CrammerError(f"{summary}: the final model was trained with a different pretraining config "
                               "than this run's; use a new --out folder")
        print(f"[pretrain] skipped: the final model is in {layout.final}")
        return layout.final
    resume = latest_checkpoint(layout.pretrain) is not None
    print(f"[pretrain] {'resuming from the last checkpoint in' if resume else 'starting in'} {layout.pretrain}")
    started = time.monotonic()
    final = Path(pretrain(config.pretrain, data_dir, layout.pretrain, resume=resume))
    if write_state:
        state.finish("pretrain", time.monotonic() - started, resumed=resume)
    return final


def task_unreachable(task: str, glue_dir: str | None) -> str | None:
    """Why `task` cannot be loaded (missing from the local folder, or the hub unreachable), else None.

    Only availability is a reason to skip: a malformed file is still an error when the task runs.
    """
    if glue_dir is not None:
        missing = missing_files(task, glue_dir)
        return f"not in --glue-dir ({missing[0]} not found)" if missing else None
    try:
        load_task(task, None)
    except CrammerError as e:
        return str(e)
    return None


def _glue_stage(config: RunConfig, final: Path, layout: RunLayout, state: RunState,
                unreachable: Callable[[str, str | None], str | None] = task_unreachable) -> None:
    """Fine-tune on every reachable task (`unreachable` says why one is not); unreachable ones are recorded
    with the reason, and retried by the next invocation (finished trials are never redone)."""
    record = state.stages.get("glue")
    if record is not None and not record["skipped"]:
        print(f"[glue] skipped: every task is done ({layout.glue / 'results.md'})")
        return
    started = time.monotonic()
    reachable, skipped = [], {}
    hub_down: str | None = None  # the first task the hub failed to give: the others will not load either
    for task in config.glue.tasks:
        if _trials_done(config.glue, layout, task):
            why = None
        elif hub_down is not None:
            why = f"not tried: loading {hub_down} from the Hugging Face hub failed"
        else:
            why = unreachable(task, config.glue.glue_dir)
            if why is not None and config.glue.glue_dir is None:
                hub_down = task
        if why is None:
            reachable.append(task)
        else:
            skipped[task] = why
            print(f"[glue] {task}: skipped: {why}")
    if reachable:
        results = evaluate_glue(str(final), dataclasses.replace(config.glue, tasks=tuple(reachable)), layout.glue)
        write_run_card(final, glue_results=results)  # the card gains the GLUE table
    state.finish("glue", time.monotonic() - started, tasks=reachable, skipped=skipped)


def _trials_done(glue: GlueConfig, layout: RunLayout, task: str) -> bool:
    return all(trial_path(layout.glue, task, k).is_file() for k in range(glue.trials))
