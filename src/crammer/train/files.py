"""The files of a pretraining run folder: one place for their names, readable without torch (the report,
`cram plot` and `cram run` read them).

    RUN_DIR/pretrain_config.json       the resolved PretrainConfig (what --resume compares against)
    RUN_DIR/metrics.jsonl              one JSON object per logged step, flushed at once
    RUN_DIR/checkpoints/step-N/        see crammer.train.checkpoint
    RUN_DIR/final/                     the Hugging Face model; final/pretraining.json is written last
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crammer.errors import CrammerError

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
