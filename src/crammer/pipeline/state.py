"""The run folder's bookkeeping: which stages finished, how long each took, and on what software.

`RUN_DIR/run.json` holds the resolved run config (once a stage has finished, a later invocation with a
different config is refused, so one folder is always one experiment) and `RUN_DIR/state.json` records each
finished stage. Both are written atomically, so a crash leaves either the old or the new record.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crammer.errors import CrammerError
from crammer.io import atomic_write_json, read_json

RUN_JSON = "run.json"
STATE_JSON = "state.json"
STAGES = ("data", "pretrain", "glue", "report")
_PACKAGES = ("crammer", "torch", "transformers", "tokenizers", "datasets", "numpy", "safetensors")


def versions() -> dict[str, str]:
    """Software and hardware that produced a result, for the report's reproducibility section."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import torch

        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
    except Exception as e:  # a broken CUDA setup must not stop the report
        out["device"] = f"unknown ({e})"
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str:
    """The crammer checkout's commit (with '+dirty' when it has local changes), or 'unknown'."""
    repo = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_record(run_dir: Path, config: dict[str, Any], command: list[str], replace: bool = False) -> dict[str, Any]:
    """Create run.json, or check that an existing one describes the same config (`replace`: overwrite
    a different one instead, for a folder where no stage has finished yet)."""
    path = run_dir / RUN_JSON
    if path.exists():
        record = read_json(path)
        old = record.get("config")
        if old == config:
            return record
        if not replace:
            diff = sorted(_diff_keys(old or {}, config))
            raise CrammerError(
                f"{path}: this run folder was started with a different config "
                f"(differs in: {', '.join(diff[:8])}); use a new --out folder or the original options"
            )
    record = {"config": config, "command": command, "versions": versions(), "created": time.time()}
    atomic_write_json(path, record)
    return record


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "<root>"]


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
