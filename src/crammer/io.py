"""Atomic file writes: a reader never sees a half-written file, a crash never destroys the old one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from crammer.errors import CrammerError

_UMASK = os.umask(0)
os.umask(_UMASK)
# mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the usual permissions.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk: what other libraries wrote there (safetensors,
    `save_pretrained`, numpy) is not fsynced by them, and the folder must be complete before its rename."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def require_dir(path: Path) -> None:
    """The default test of `atomic_dir`: an existing directory may be replaced, a file may not."""
    if not path.is_dir():
        raise CrammerError(f"{path}: exists and is not a folder; choose another output or remove it")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, check_existing: Callable[[Path], None] = require_dir) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only when complete.

    An existing entry at `path` is replaced only after the new directory is fully written, and only if
    `check_existing(path)` does not raise (it runs before anything is written and again just before the
    swap). A caller whose `path` may be a user's folder passes a stricter test, so that a mistyped
    output never deletes unrelated files.
    """
    path = Path(path)
    if _exists(path):
        check_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        os.chmod(tmp, DIR_MODE)
        if _exists(path):
            check_existing(path)
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        _remove(tmp)


def remove_stale_temps(folder: str | os.PathLike, name_pattern: str) -> list[Path]:
    """Delete what `atomic_dir` writes killed mid-way (SIGKILL, power loss) left in `folder`: the
    `.NAME.<random>.tmp` build folders and `.NAME.old` swap leftovers of every NAME that fully matches the
    regex `name_pattern`. They can be gigabytes (a corpus's staging shards, a checkpoint).

    Assumes a single writer per output: a concurrent writer's staging folder would be deleted too.
    """
    # `tempfile` names are `prefix` + [a-z0-9_] + `suffix`: `.out.v2.x.tmp` belongs to the output `out.v2`.
    pattern = re.compile(rf"\.(?:{name_pattern})\.(?:[a-z0-9_]+\.tmp|old)")
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no folder yet: nothing to clean
        return []
    stale = [p for p in entries if pattern.fullmatch(p.name)]
    for p in stale:
        _remove(p)
    return stale


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree if there is one (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink(missing_ok=True)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or malformed file into a CrammerError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CrammerError(f"{path}: file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CrammerError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
