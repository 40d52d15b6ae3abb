"""The output folder of `cram data prepare`: what may be replaced, and how a stopped run cleans up.

Everything is built in a temporary folder renamed into place at the end (`crammer.io.atomic_dir`); an
existing output is replaced only if it is empty or an earlier prepared corpus, and that is checked
before any reading. SIGTERM unwinds like Ctrl-C, so the temporary folder goes with it; one a hard kill
leaves behind is deleted by the next run into the same output (one writer per output folder, which
`prepare` makes sure of with `crammer.io.exclusive_folder`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from crammer.data.manifest import MANIFEST, is_prepared_corpus
from crammer.errors import CrammerError, SignalInterrupt


def check_output(out: Path) -> None:
    """Fail before any reading on an output folder that cannot be written or must not be replaced."""
    resolved = out.resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise CrammerError(f"{out}: is the current folder or one above it, which the output would replace; "
                           "name a new folder, e.g. --out data")
    if resolved.exists():
        replaceable_output(resolved)
    blocking = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise CrammerError(f"{out}: cannot create the output folder, {blocking} is a file")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrammerError(f"{out}: cannot create the output's parent folder ({e.strerror or e})") from None
    if not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise CrammerError(f"{out}: cannot write in {resolved.parent} (permission denied)")


def replaceable_output(path: Path) -> None:
    """An existing output may be replaced only if it is an empty folder or an earlier prepared corpus: a
    mistyped --out must not delete someone's files."""
    if not path.is_dir():
        raise CrammerError(f"{path}: exists and is a file, not an output folder; choose another --out")
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise CrammerError(f"{path}: cannot read the existing output folder ({e.strerror or e})") from None
    if not empty and not is_prepared_corpus(path):
        raise CrammerError(f"{path}: folder is not empty and is not a prepared corpus (no {MANIFEST} of "
                           "`cram data prepare`); refusing to replace it, choose another --out")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler) unwinds like Ctrl-C, so the temporary folder is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise SignalInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
