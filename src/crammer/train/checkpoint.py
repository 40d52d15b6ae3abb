"""Checkpoints that survive crashes: atomic folders, verified before use, the newest K complete ones kept.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN/` with
- `model.safetensors`: weights (tied tensors stored once),
- `trainer.pt`: optimizer, gradient-scaler and RNG states (plain tensors and numbers, so it loads with
  `torch.load(weights_only=True)`),
- `state.json`: step, tokens, data position, elapsed budget, ... and the byte size of each file.
The folder is built under a temporary name and renamed into place when complete; on top of that a
checkpoint whose files do not match the sizes recorded in its `state.json` is skipped, so a
truncated or half-copied checkpoint is never resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_write_json, read_json, remove_stale_temps
from crammer.train.files import CHECKPOINT_DIR

STATE_FILE = "state.json"
_NAME = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}"


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
    state: dict[str, Any], keep: int,
) -> Path:
    """Write checkpoint `step` atomically, then keep only it and the newest `keep` complete ones."""
    path = checkpoint_path(run_dir, step)
    remove_stale_temps(Path(run_dir) / CHECKPOINT_DIR, r"step-\d+")  # first: a killed write's gigabytes
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state(), **trainer_state}, tmp / "trainer.pt")
        files = {name: (tmp / name).stat().st_size for name in ("model.safetensors", "trainer.pt")}
        atomic_write_json(tmp / STATE_FILE, {**state, "step": step, "files": files})
    prune_checkpoints(run_dir, keep, written=path)
    return path


def prune_checkpoints(run_dir: Path, keep: int, written: Path) -> None:
    """Delete every checkpoint but `written` and the newest `keep` complete ones.

    Only complete checkpoints count: a damaged newer one (which can never be resumed from) must not
    push good ones out. Damaged ones are deleted too, with a line on stderr.
    """
    checkpoints = list_checkpoints(run_dir)
    complete = [path for path in checkpoints if checkpoint_problem(path) is None]
    kept = {*complete[-keep:], written}
    for path in checkpoints:
        if path in kept:
            continue
        if path not in complete:
            print(f"cram: removing incomplete checkpoint {path} ({checkpoint_problem(path)})", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders by increasing step (temporary folders of unfinished writes are not listed)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None if it is complete."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {STATE_FILE}"
    for name, size in files.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones are reported on stderr and passed over."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"cram: skipping incomplete checkpoint {path} ({problem})", file=sys.stderr)
    return None


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights (and optimizer state) in place; return (state.json, the rest of trainer.pt)."""
    problem = checkpoint_problem(path)
    if problem:
        raise CrammerError(f"{path}: incomplete checkpoint ({problem})")
    state = read_json(path / STATE_FILE)
    try:
        load_model(model, str(path / "model.safetensors"), device=str(device))
        trainer = torch.load(path / "trainer.pt", map_location=device, weights_only=True)
    except (RuntimeError, OSError) as e:
        raise CrammerError(f"{path}: cannot load checkpoint ({str(e).splitlines()[0]})") from None
    if optimizer is not None:
        optimizer.load_state_dict(trainer.pop("optimizer"))
    return state, trainer
