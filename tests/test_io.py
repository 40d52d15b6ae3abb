"""Atomic writes: readers never see partial files; a failure leaves the previous version intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_path, atomic_write_json, read_json


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
