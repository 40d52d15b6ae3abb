"""Checkpoints that survive crashes: atomic folders, verified before use, the newest K complete ones kept.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN/` with
- `model.safetensors`: weights (tied tensors stored once),
- `config.json` and the tokenizer files: so the folder is also a Hugging Face model folder
  (`AutoModelForMaskedLM.from_pretrained`, `cram glue --model`, `cram validate`),
- `trainer.pt`: optimizer, gradient-scaler and RNG states (plain tensors and numbers, so it loads with
  `torch.load(weights_only=True)`),
- `state.json`: step, tokens, data position, elapsed budget, ... and the size and sha256 of every other file.
The folder is built under a temporary name and renamed into place when complete. A checkpoint is loaded only
if every file it records has the recorded size and digest (checkpoints from before digests: the size); a
damaged or unreadable one is reported in one line and passed over for the next older one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_write_json, read_json, remove_stale_temps
from crammer.runfiles import CHECKPOINT_DIR

STATE_FILE = "state.json"
WEIGHTS = "model.safetensors"
TRAINER = "trainer.pt"
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
    state: dict[str, Any], keep: int, model_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` atomically (`model_files(folder)` adds what makes it a model folder), then keep
    only it and the newest `keep` complete ones."""
    path = checkpoint_path(run_dir, step)
    remove_stale_temps(Path(run_dir) / CHECKPOINT_DIR, r"step-\d+")  # first: a killed write's gigabytes
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})  # the metadata Hugging Face expects
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state(), **trainer_state}, tmp / TRAINER)
        if model_files is not None:
            model_files(tmp)
        written = sorted(f for f in tmp.rglob("*") if f.is_file())
        files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in written}
        digests = {f.relative_to(tmp).as_posix(): file_digest(f) for f in written}
        atomic_write_json(tmp / STATE_FILE, {**state, "step": step, "files": files, "sha256": digests})
    prune_checkpoints(run_dir, keep, written=path)
    return path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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


def checkpoint_problem(path: Path, verify: bool = False) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None if it is complete. Sizes are always compared;
    `verify` also recomputes every recorded digest (reads the whole checkpoint: done before loading it)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        files, digests = state["files"], state.get("sha256", {})
        if not isinstance(files, dict) or not isinstance(digests, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {STATE_FILE}"
    for name, size in files.items():
        file = path / name
        if not _inside(file, path):
            return f"{STATE_FILE} names {name!r}, outside the checkpoint"
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
    if verify:
        for name, digest in digests.items():
            if name not in files:
                return f"{STATE_FILE} records a digest of {name!r} but not its size"
            if file_digest(path / name) != digest:
                return f"{name} does not match its recorded sha256 (damaged)"
    return None


def _inside(file: Path, folder: Path) -> bool:
    return file.resolve().is_relative_to(folder.resolve())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files have their recorded sizes; others are reported on stderr and passed
    over (digests are checked when one is loaded: `load_latest`)."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"cram: skipping incomplete checkpoint {path} ({problem})", file=sys.stderr)
    return None


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify every file, then load weights (and optimizer state) in place; return (state.json, the rest of
    trainer.pt). Any failure is a one-line CrammerError, whatever the bytes."""
    problem = checkpoint_problem(path, verify=True)
    if problem:
        raise CrammerError(f"{path}: damaged or incomplete checkpoint ({problem})")
    try:
        state = read_json(path / STATE_FILE)
        load_model(model, str(path / WEIGHTS), device=str(device))
        trainer = torch.load(path / TRAINER, map_location=device, weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(trainer.pop("optimizer"))
    except CrammerError:
        raise
    except Exception as e:  # safetensors, unpickling, shape errors: the message may advise unsafe loading
        raise CrammerError(f"{path}: cannot load checkpoint ({type(e).__name__})") from None
    return state, trainer


def load_latest(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device
) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """Load the newest checkpoint that verifies and loads, reporting each one passed over in one line;
    None when there is none at all. (A failed load may leave weights half-written: the next one overwrites
    them all.)"""
    checkpoints = list_checkpoints(run_dir)
    for path in reversed(checkpoints):
        try:
            state, trainer = load_checkpoint(path, model, optimizer, device)
        except CrammerError as e:
            print(f"cram: skipping checkpoint: {e}", file=sys.stderr)
            continue
        return path, state, trainer
    if checkpoints:
        raise CrammerError(f"{Path(run_dir) / CHECKPOINT_DIR}: no checkpoint can be loaded (all {len(checkpoints)} "
                           "are damaged, see above); start a new run with another --out")
    return None
