"""A run folder's files: their names and their readers, in one low, torch-free module that every stage, the
report, the model card and the recipe lab read (writers import it too, so a name is never spelt twice).

A pretraining run folder (`cram pretrain --out RUN_DIR`):

    RUN_DIR/pretrain_config.json       the resolved PretrainConfig (what --resume compares against)
    RUN_DIR/metrics.jsonl              one JSON object per logged step or validation, flushed at once
    RUN_DIR/checkpoints/step-N/        see crammer.train.checkpoint
    RUN_DIR/final/                     the Hugging Face model; final/pretraining.json is written last

A `cram run` folder (`RunLayout`) holds one of those in `pretrain/`, beside `data/`, `glue/`, the report,
`run.json` (the resolved run config) and `state.json` (the finished stages, `RunState`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crammer.errors import CrammerError
from crammer.io import atomic_write_json, read_json

CONFIG_FILE = "pretrain_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
SUMMARY_FILE = "pretraining.json"  # written last into final/: its presence means the run finished


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of RUN_DIR/metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise CrammerError(f"{path}: no metrics yet (is {run_dir} a `cram pretrain` run folder?)")
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise CrammerError(f"{path}:{number}: not a JSON object") from None
    return records


def training_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of logged optimizer steps (metrics.jsonl also holds one row per validation)."""
    return [r for r in records if "lr" in r]


def validation_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of evaluations on the validation subset: val_loss, val_accuracy, eval_share, ..."""
    return [r for r in records if "val_loss" in r]


RUN_JSON = "run.json"
STATE_JSON = "state.json"
STAGES = ("data", "pretrain", "glue", "report")

def relative_to_run(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """A path inside the run folder relative to it (what the run's records hold, so that they stay true
    wherever the folder is moved or copied, and whatever the working directory); one outside it absolute."""
    path, run_dir = Path(path).expanduser().resolve(), Path(run_dir).expanduser().resolve()
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def data(self) -> Path:
        """The prepared corpus (reused when its recipe hash matches, see crammer.data.prepare)."""
        return self.root / "data"

    @property
    def pretrain(self) -> Path:
        """The pretraining run folder: checkpoints, metrics.jsonl and final/."""
        return self.root / "pretrain"

    @property
    def final(self) -> Path:
        """The pretrained model as a Hugging Face folder (written by pretraining when it completes)."""
        return self.pretrain / "final"

    @property
    def glue(self) -> Path:
        return self.root / "glue"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


@dataclass
class RunState:
    """Finished stages of one run folder: name -> {seconds, finished, ...stage details}."""

    run_dir: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RunState":
        path = Path(run_dir) / STATE_JSON
        data = read_json(path) if path.exists() else {}
        stages = data.get("stages", {})
        if not isinstance(stages, dict):
            raise CrammerError(f"{path}: field 'stages' must be an object")
        return cls(Path(run_dir), stages)

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def finish(self, stage: str, seconds: float, **details: Any) -> None:
        """Record a finished stage; a stage finished again (GLUE retrying skipped tasks) adds its time."""
        seconds += self.stages.get(stage, {}).get("seconds", 0.0)
        self.stages[stage] = {"seconds": seconds, "finished": time.time(), **details}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.run_dir / STATE_JSON, {"stages": self.stages})
