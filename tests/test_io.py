"""Safe writes: readers never see partial files; a failure or a full disk leaves the previous version intact;
one writer per folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crammer.errors import CrammerError
from crammer.io import (DiskFull, atomic_dir, atomic_path, atomic_write_json, exclusive_folder, is_disk_full, lock_file,
                        read_json, remove_stale_temps)
from tests.full_disk import full_disk_fixture  # noqa: F401 (the `full_disk` fixture)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    out = tmp_path / "corpus"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_atomic_dir_flushes_every_file_before_the_rename(tmp_path, monkeypatch):
    """Files written inside by other libraries (safetensors, numpy) must reach the disk before the swap."""
    import crammer.io as io

    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    monkeypatch.setattr(io.os, "replace", lambda a, b: renamed.append(len(synced)) or real_replace(a, b))
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "shard.npy").write_bytes(b"y")
    names = [Path(s).name for s in synced[:renamed[0]]]
    assert "weights.bin" in names and "shard.npy" in names and "sub" in names


def test_atomic_dir_replaces_only_what_the_caller_allows(tmp_path):
    """It used to rename away and delete whatever was at the path, a user's folder or a file alike."""

    def only_empty(path: Path) -> None:
        if any(path.iterdir()):
            raise CrammerError(f"{path}: not empty")

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep").write_text("precious")
    with pytest.raises(CrammerError, match="mine: not empty"):
        with atomic_dir(mine, only_empty):
            pytest.fail("refused only after the work")  # checked before anything is built
    late = tmp_path / "late"
    with pytest.raises(CrammerError, match="late: not empty"):
        with atomic_dir(late, only_empty) as tmp:
            (tmp / "new").write_text("1")
            late.mkdir()  # appears while the new folder is built: checked again before the swap
            (late / "keep").write_text("precious")
    a_file = tmp_path / "a_file"
    a_file.write_text("data")
    with pytest.raises(CrammerError, match="a_file: exists and is not a folder"):
        with atomic_dir(a_file):  # the default: a folder may be replaced, a file never
            pass
    assert (mine / "keep").read_text() == (late / "keep").read_text() == "precious" and a_file.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "late", "mine"]


def test_remove_stale_temps_takes_only_this_paths_leftovers(tmp_path):
    leftovers = [Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path)),  # as atomic_dir names them
                 Path(tempfile.mkstemp(prefix=".out.", suffix=".tmp", dir=tmp_path)[1])]  # as atomic_path does
    (leftovers[0] / "shard.npy").write_bytes(b"x")
    kept = [".out.v2.abc123.tmp", ".outer.abc123.tmp", ".out.tmp", "out", "x.out.ab.tmp"]  # `out.v2`'s, `outer`'s
    for name in kept:
        (tmp_path / name).mkdir()
    (tmp_path / ".out.old").mkdir()  # a swap killed between its two renames
    leftovers.append(tmp_path / ".out.old")
    assert sorted(remove_stale_temps(tmp_path, "out")) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temps(tmp_path / "missing", "out") == []


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(CrammerError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n oops}')
    with pytest.raises(CrammerError, match=r"bad.json:2: invalid JSON"):
        read_json(bad)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_read_json_says_where_in_the_file_in_full(tmp_path):
    """`e.msg` alone stops mid-phrase ("Unterminated string starting at"); the position completes it."""
    cut = tmp_path / "cut.json"
    cut.write_text('{"a": 1,\n "b": "unfinished')
    with pytest.raises(CrammerError) as e:
        read_json(cut)
    assert str(e.value) == f"{cut}:2: invalid JSON (Unterminated string starting at: line 2 column 7)"


# ----------------------------------------------------------------------------------------------- the lock
_HOLD = """
import sys, time
from crammer.io import exclusive_folder
with exclusive_folder(sys.argv[1], "run folder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holding_child(folder: Path) -> subprocess.Popen:
    """A real second process that takes the folder's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    child = _holding_child(folder)
    try:
        with pytest.raises(CrammerError) as e:
            with exclusive_folder(folder, "run folder"):
                pytest.fail("two writers in one folder")
        assert str(e.value) == (f"{folder}: this run folder is in use by another crammer process (pid {child.pid}); "
                                "wait for it to finish or stop it, or use another folder")
    finally:
        child.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays, with the dead holder's pid in it
        child.wait()
    assert json.loads(lock_file(folder).read_text())["pid"] == child.pid
    with exclusive_folder(folder, "run folder") as held:  # the kernel dropped the dead process's lock
        assert held == folder
        assert json.loads(lock_file(folder).read_text())["pid"] == os.getpid()
    assert not lock_file(folder).exists()  # released: nothing left beside the folder


def test_the_lock_is_reentrant_in_a_process_and_free_for_others_after_it(tmp_path):
    folder = tmp_path / "run"
    with exclusive_folder(folder):
        with exclusive_folder(folder):  # e.g. `cram run` holding a folder that a stage locks again
            pass
        assert json.loads(lock_file(folder).read_text())["pid"] == os.getpid()  # still held by the outer block
        refused = subprocess.run([sys.executable, "-c", _HOLD, str(folder)], capture_output=True, text=True)
        assert refused.returncode == 1 and f"(pid {os.getpid()})" in refused.stderr
    child = _holding_child(folder)  # released: another process gets it at once
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_the_lock_sits_beside_the_folder_so_a_folder_renamed_into_place_stays_locked(tmp_path):
    """A prepared corpus is built under a temporary name and renamed over the old one: a lock inside would
    go with the old folder, and a second writer would lock the new one unhindered."""
    corpus = tmp_path / "data"
    with exclusive_folder(corpus, "prepared corpus"):
        for _ in range(2):
            with atomic_dir(corpus) as tmp:
                (tmp / "manifest.json").write_text("{}")
        assert lock_file(corpus) == tmp_path / ".data.lock" and sorted(os.listdir(corpus)) == ["manifest.json"]
        refused = subprocess.run([sys.executable, "-c", _HOLD, str(corpus)], capture_output=True, text=True)
        assert refused.returncode == 1 and f"{corpus}: this run folder is in use" in refused.stderr
    assert remove_stale_temps(tmp_path, "data") == []  # the lock file is no leftover of atomic_dir


# ------------------------------------------------------------------------------------------ a full disk
def _fill(path: Path) -> None:
    """Write `path` until the disk is full (the write that fails is the caller's)."""
    with open(path, "wb") as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"x" * (1 << 16))
                f.flush()


@pytest.mark.parametrize("writer", ["plain", "numpy", "torch", "tokenizers"])
def test_a_full_disk_while_writing_a_file_is_one_line_naming_it_and_keeps_the_old_one(writer, full_disk):
    """Each library says it differently: errno ENOSPC, numpy's "N requested and M written", torch's
    "[enforce fail at inline_container.cc]", the Rust "No space left on device (os error 28)"."""
    import numpy as np

    target = full_disk / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(DiskFull) as e:
        with atomic_path(target) as tmp:
            if writer == "plain":
                tmp.write_bytes(b"x" * (4 << 20))
            elif writer == "numpy":
                with open(tmp, "wb") as f:  # by name, numpy would add ".npy"
                    np.save(f, np.zeros(1 << 20))
            elif writer == "torch":
                import torch

                torch.save({"weights": torch.zeros(1 << 20)}, tmp)
            else:
                from tokenizers import Tokenizer, models

                vocab = {f"token{i:07d}": i for i in range(1 << 17)}
                Tokenizer(models.WordPiece(vocab, unk_token="token0000000")).save(str(tmp))
    assert isinstance(e.value, CrammerError) and str(e.value) == f"no space left on device while writing {target}"
    assert target.read_bytes() == b"old" and os.listdir(full_disk) == ["f.bin"]  # temporary gone


def test_a_full_disk_inside_a_folder_names_the_folder_and_keeps_the_old_one(full_disk):
    """A checkpoint or a corpus: the failing write is a file inside, the message names what is being built."""
    import torch

    out = full_disk / "checkpoints" / "step-10"
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "state.json", {"step": 10})
    for last_write in ("torch", "json"):
        with pytest.raises(DiskFull) as e:
            with atomic_dir(out) as tmp:
                torch.save({"weights": torch.zeros(1 << 16)}, tmp / "trainer.pt")  # 256 KiB: fits
                if last_write == "torch":
                    torch.save({"weights": torch.zeros(1 << 18)}, tmp / "model.pt")  # 1 MiB
                else:
                    _fill(tmp / "more")
                    atomic_write_json(tmp / "state.json", {"step": 20})  # a nested atomic write fails
        assert str(e.value) == f"no space left on device while writing {out}"
        assert read_json(out / "state.json") == {"step": 10} and os.listdir(out) == ["state.json"]
        assert sorted(os.listdir(out.parent)) == ["step-10"]


def test_a_failed_write_with_room_to_spare_keeps_its_own_error(tmp_path):
    """numpy's short write says no reason: it is taken for a full disk only when the disk is (nearly) full."""
    with pytest.raises(OSError, match="requested and") as e:
        with atomic_path(tmp_path / "f"):
            raise OSError("1000 requested and 10 written")
    assert not isinstance(e.value, CrammerError)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(RuntimeError("I/O error: No space left on device (os error 28)"), tmp_path)
    assert not is_disk_full(CrammerError("no space left on device while writing x"), tmp_path)


def test_on_a_full_disk_only_failures_that_give_no_reason_are_taken_for_it(full_disk):
    _fill(full_disk / "ballast")
    assert is_disk_full(OSError("1000 requested and 10 written"), full_disk)  # numpy: no errno
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"), full_disk)
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"), full_disk)  # says another reason
    assert not is_disk_full(ValueError("bad value"), full_disk)
