"""A real full disk for the fault tests: a small tmpfs mounted for one test (root only; skipped otherwise).

Import `full_disk_fixture` into a test module to use the `full_disk` fixture.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(name="full_disk")
def full_disk_fixture(tmp_path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own (tmpfs), to be filled up: no other way shows what a full disk does to
    numpy, torch and the Rust libraries."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
