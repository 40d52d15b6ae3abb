"""Safe writes: a reader never sees a half-written file, a crash or a full disk never destroys the old one,
and one process at a time writes a folder.

- `atomic_path`, `atomic_dir`, `atomic_write_*`: write under a temporary name, rename into place when
  complete. A full disk met while writing (an `ENOSPC` OSError, numpy's short write, torch's failed zip
  write, a Rust library's "No space left on device") becomes `DiskFull`, a one-line CrammerError naming the
  path; the temporary is removed, so the previous version stays. `atomic_dir` holds a lock on its staging
  folder while it writes, and deletes the staging folders of its path that no live process holds (a writer
  killed with `kill -9` leaves one behind).
- `exclusive_folder`: an advisory lock (`flock`) on a file beside a folder, so that a second writer is
  refused with the holder's pid instead of both writing; the kernel drops the lock of a killed process.
- `read_json`: a missing or malformed file becomes a CrammerError naming it, with line and column.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
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


# ------------------------------------------------------------------------------------------------ full disk
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")  # strerror, also in Rust's io::Error text
LOW_SPACE_BYTES = 1 << 20  # below this much free space, a failed write is taken for a full disk


class DiskFull(CrammerError):
    """The disk (or the user's quota) filled up while `path` was being written."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(f"no space left on device while writing {path}")
        self.path = Path(path)


def disk_full_cause(e: BaseException) -> BaseException | None:
    """The exception in `e`'s chain that says the disk is full in so many words (errno or text), else None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if any(text in str(e) for text in DISK_FULL_TEXTS):
            return e
        e = e.__cause__ or e.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Space left to ordinary users on the filesystem holding `path` (None if it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(e: BaseException, where: str | os.PathLike) -> bool:
    """Whether `e`, raised while writing in the folder `where`, comes from a full disk.

    Yes when it says so (errno ENOSPC/EDQUOT, or the strerror text in a library's message); and for the
    failures that do not say why (numpy's `OSError: N requested and M written`, which has no errno, torch's
    `RuntimeError` from its zip writer), when that filesystem has less than LOW_SPACE_BYTES left: asked
    before the temporary files are removed, a write that failed for want of space leaves next to nothing
    free. An OSError with another errno (permissions, a missing folder) is never taken for a full disk.
    """
    if isinstance(e, CrammerError):
        return False
    if disk_full_cause(e) is not None:
        return True
    if isinstance(e, RuntimeError) or isinstance(e, OSError) and e.errno is None:
        free = free_bytes(where)
        return free is not None and free < LOW_SPACE_BYTES
    return False


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike, where: str | os.PathLike | None = None) -> Iterator[None]:
    """Raise `DiskFull(path)` for an exception from a full disk while writing `path` (in the folder `where`,
    default its parent); a DiskFull from a nested write is renamed to `path`, the outermost thing written."""
    try:
        yield
    except DiskFull as e:
        raise DiskFull(path) from e.__cause__
    except Exception as e:
        if is_disk_full(e, where if where is not None else Path(path).parent):
            raise DiskFull(path) from e
        raise


# ------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`. A full disk
    is a DiskFull naming `path`, with the temporary removed and `path` as it was."""
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_full_as_error(path):  # judged before the finally below frees the temporary's space
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
    output never deletes unrelated files. A full disk is a DiskFull naming `path`; the temporary folder
    is removed and `path` is left as it was.
    """
    path = Path(path)
    if _exists(path):
        check_existing(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(path)
        tmp, held = _staging_folder(path)
    try:
        with disk_full_as_error(path, tmp):  # judged before the finally below frees the temporary's space
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
        os.close(held)


def _staging_folder(path: Path) -> tuple[Path, int]:
    """(a fresh `.NAME.<random>.tmp` folder beside `path`, the fd that holds its `flock`). The lock says a live
    process is writing it; the kernel drops it when that process dies, however it dies, so that the next writer
    of `path` knows the folder for a leftover (`_remove_dead_staging`)."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a clean-up that came first deletes it
        except OSError:  # a filesystem without locks: the folder is not cleaned up by others either
            return tmp, fd
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:  # deleted by that clean-up: make another
            pass
        os.close(fd)


def _staging_pattern(name_pattern: str) -> re.Pattern:
    # `tempfile` names are `prefix` + [a-z0-9_] + `suffix`: `.out.v2.x.tmp` belongs to the output `out.v2`.
    return re.compile(rf"\.(?:{name_pattern})\.(?:[a-z0-9_]+\.tmp|old)")


def _remove_dead_staging(path: Path) -> None:
    """Delete the staging folders of `path` that no live process holds (left by a writer killed mid-way:
    `kill -9`, power loss; they can be gigabytes, a model or a checkpoint), and the `.NAME.old` a swap left,
    unless some writer of `path` is live (its swap may be under way)."""
    entries = _unheld_temps(path.parent, _staging_pattern(re.escape(path.name)))
    if entries is not None:
        for entry in entries:
            _remove(entry)


def _unheld_temps(folder: Path, pattern: re.Pattern) -> list[Path] | None:
    """The entries of `folder` whose name fully matches `pattern` and that no live process holds; each staging
    folder among them is deleted at once, while its lock is taken (so that no writer can take it meanwhile).
    None when a staging folder is held: a live writer, whose `.old` must stay."""
    try:
        entries = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    except OSError:  # no folder yet: nothing to clean
        return []
    held = False
    rest = []
    for entry in entries:
        if not entry.name.endswith(".tmp") or entry.is_symlink() or not entry.is_dir():
            rest.append(entry)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # gone meanwhile (its writer finished), or not ours to read
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live writer (or locks unsupported: cannot tell, so leave it)
            held = True
        else:
            _remove(entry)
        finally:
            os.close(fd)
    return None if held else rest


def remove_stale_temps(folder: str | os.PathLike, name_pattern: str) -> list[Path]:
    """Delete what `atomic_dir` writes killed mid-way (SIGKILL, power loss) left in `folder`: the
    `.NAME.<random>.tmp` build folders and `.NAME.old` swap leftovers of every NAME that fully matches the
    regex `name_pattern`. They can be gigabytes (a corpus's staging shards, a checkpoint).

    A staging folder a live process holds (see `_staging_folder`) is left alone; the `.old` leftovers assume a
    single writer per output (hold `exclusive_folder` around it). `atomic_dir` itself cleans up after its own
    NAME; this is for outputs whose NAME changes (checkpoints `step-N`).
    """
    pattern = _staging_pattern(name_pattern)
    before = {p for p in Path(folder).glob(".*") if pattern.fullmatch(p.name)} if Path(folder).is_dir() else set()
    for p in _unheld_temps(Path(folder), pattern) or []:
        _remove(p)
    return sorted(p for p in before if not _exists(p))


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
        raise CrammerError(invalid_json(str(path), e)) from None


def invalid_json(where: str, e: json.JSONDecodeError, first_line: int = 1) -> str:
    """`WHERE:LINE: invalid JSON (MSG: line L column C)` for text that started at line `first_line` of the
    file: `e.msg` alone stops mid-phrase ("Unterminated string starting at"), the position completes it."""
    line = first_line + e.lineno - 1
    return f"{where}:{line}: invalid JSON ({e.msg}: line {line} column {e.colno})"


# ------------------------------------------------------------------------------------------------- locking
LOCK_SUFFIX = ".lock"
_held: dict[str, int] = {}  # lock file -> how many `exclusive_folder` blocks of this process hold it
_held_guard = threading.Lock()
os.register_at_fork(after_in_child=_held.clear)  # a forked child holds nothing of its own


def lock_file(folder: str | os.PathLike) -> Path:
    """The lock of `folder`: `.NAME.lock` beside it, not inside, because a folder renamed into place whole
    (a prepared corpus, see `atomic_dir`) would leave a lock inside it behind on the old inode."""
    folder = Path(folder).expanduser().resolve()  # a link and its target share one lock
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold `folder` for this process while the block runs: a second process (any command, same folder)
    gets a one-line CrammerError naming the folder and the holder's pid, instead of both writing.

    The lock is `flock` on `lock_file(folder)`, which holds the holder's pid and host for that message and is
    deleted on release. The kernel releases the lock when the holder exits, however it dies, so the file a
    killed process leaves is taken over by the next one with nothing to clean. (Taking it checks that the
    locked file is still the one at the path, so the deletion races with no one.) Re-entrant within a
    process: nested blocks share the lock.
    Advisory only: it keeps crammer's own commands apart, not other programs. `what` names the folder in the
    message ("run folder", "prepared corpus").
    """
    target = Path(folder).expanduser()
    if _exists(target) and not target.is_dir():  # else the first write inside it fails with a traceback
        raise CrammerError(f"{folder}: exists and is a file, not a {what}; choose another --out")
    path = lock_file(folder)
    key = str(path)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield Path(folder)
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _lock(path, Path(folder), what)
    with _held_guard:
        _held[key] = 1
    try:
        yield Path(folder)
    finally:
        with _held_guard:
            del _held[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: whoever opened it meanwhile sees it gone and retries
            os.close(fd)  # releases the lock


def _lock(path: Path, folder: Path, what: str) -> int | None:
    """Take the lock file's flock, or raise naming its holder; the fd to close (None: locks unsupported here)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrammerError(f"{folder}: cannot create its parent folder ({e.strerror or e})") from None
    for _ in range(10):  # the path must still name the file we locked (someone may have deleted it meanwhile)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                raise DiskFull(path) from e
            raise CrammerError(f"{folder}: cannot create the lock file {path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CrammerError(f"{folder}: this {what} is in use by another crammer process ({holder}); wait for "
                               f"it to finish or stop it, or use another folder") from None
        except OSError as e:  # a filesystem without locks (some network or FUSE mounts): go on unlocked
            os.close(fd)
            print(f"cram: warning: {path}: cannot lock ({e.strerror or e}); make sure no other process writes "
                  f"{folder} meanwhile", file=sys.stderr)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise CrammerError(f"{folder}: its lock file {path} keeps being replaced; is something deleting it?")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path) from e
        raise
    return fd


def _holder(fd: int) -> str:
    """'pid N on HOST' from a held lock file (its holder writes it just after locking: wait a moment for it)."""
    for _ in range(50):
        try:
            record = json.loads(os.pread(fd, 4096, 0))
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        if isinstance(record, dict) and "pid" in record:
            host = record.get("host")
            return f"pid {record['pid']}" + (f" on {host}" if host and host != socket.gethostname() else "")
    return "pid unknown"
