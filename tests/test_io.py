"""Atomic writes: readers never see partial files; a failure leaves the previous version intact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_path, atomic_write_json, read_json, remove_stale_temps


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
