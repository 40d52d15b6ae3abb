"""Writing a run folder's bookkeeping: `RUN_DIR/run.json` and the software that produced a result (its
names and `RunState`, the finished stages in `RUN_DIR/state.json`, live in `crammer.runfiles`).

`RUN_DIR/run.json` holds the resolved run config (once a stage has finished, a later invocation with a
different config is refused, so one folder is always one experiment) and `RUN_DIR/state.json` records each
finished stage. Both are written atomically, so a crash leaves either the old or the new record. Paths inside
the run folder are recorded relative to it, so a folder moved or copied elsewhere resumes as the same run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from crammer.config import changed_keys, with_defaults
from crammer.errors import CrammerError
from crammer.io import atomic_write_json, read_json
from crammer.runfiles import RUN_JSON, relative_to_run

PATHS_KEY, PATHS_RELATIVE = "paths", "relative to the run folder"  # run.json: how its config holds paths
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


def write_run_record(run_dir: Path, config: dict[str, Any], command: list[str], replace: bool = False,
                     defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create run.json, or check that an existing one describes the same config (`replace`: overwrite
    a different one instead, for a folder where no stage has finished yet; `defaults`: the config class's, which
    fill in settings an older version did not record). `config` holds the paths inside
    the run folder relative to it (`data.out`), so a moved or copied folder keeps its config."""
    path = run_dir / RUN_JSON
    if path.exists():
        record = read_json(path)
        if not isinstance(record, dict):
            raise CrammerError(f"{path}: not a run record (a JSON object expected, got {type(record).__name__})")
        old = _config_with_relative_paths(record, run_dir)
        if with_defaults(old, defaults or {}) == config:
            return record
        if not replace:
            diff = changed_keys(with_defaults(old or {}, defaults), config)
            raise CrammerError(
                f"{path}: this run folder was started with a different config "
                f"(differs in: {', '.join(diff[:8])}); use a new --out folder or the original options"
            )
    record = {"config": config, "command": command, "versions": versions(), "created": time.time(),
              PATHS_KEY: PATHS_RELATIVE}
    atomic_write_json(path, record)
    return record


def _config_with_relative_paths(record: dict[str, Any], run_dir: Path) -> Any:
    """The record's config with `data.out` as this version writes it. Records from before PATHS_KEY hold it
    as it was typed, `--out` + "/data" relative to that working directory: it is made relative to the `--out`
    of the record's own command (so the folder may since have moved), else to this run folder."""
    config = record.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    if record.get(PATHS_KEY) == PATHS_RELATIVE or not isinstance(data, dict) or not isinstance(data.get("out"), str):
        return config
    out = os.path.normpath(data["out"])
    command = record.get("command")
    typed = command[command.index("--out") + 1] if isinstance(command, list) and "--out" in command[:-1] else None
    if isinstance(typed, str) and Path(out).is_relative_to(os.path.normpath(typed)):
        recorded = str(Path(out).relative_to(os.path.normpath(typed)))
    else:
        recorded = relative_to_run(out, run_dir)
    return {**config, "data": {**data, "out": recorded}}
