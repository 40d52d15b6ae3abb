"""Progress that suits where it is read: a live bar on a terminal; plain lines in a log file.

A day-long run under nohup, tmux or a batch scheduler writes its stderr to a file, where a progress bar's
carriage-return frames make one endless line. Off a terminal every crammer progress display prints a plain,
timestamped line instead (at most one per LINE_EVERY seconds, and one at the end), and the progress bars of
Hugging Face libraries are switched off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

LINE_EVERY = 30.0  # seconds between two plain progress lines of one display


def interactive() -> bool:
    """Whether stderr is a terminal (a person watching), not a file or a pipe."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def quiet_third_party_bars() -> None:
    """Off a terminal, silence the progress bars of huggingface_hub, transformers and datasets ("Writing model
    shards", downloads). They read these variables when imported, so this runs before they are."""
    if not interactive():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Off a terminal, transformers' own bars ("Writing model shards") off while the block runs (for the
    Python API, where `quiet_third_party_bars` came too late: transformers is imported already)."""
    if interactive():
        yield
        return
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class LineProgress:
    """The part of tqdm's interface crammer uses, printing plain lines: `desc: n[/total] unit, postfix`."""

    def __init__(self, iterable: Any = None, total: float | None = None, desc: str = "", unit: str = "it",
                 every: float = LINE_EVERY, **_: Any):
        self.iterable, self.total, self.desc, self.unit, self.every = iterable, total, desc, unit.strip(), every
        self.n = 0
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.closed = False

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": time.monotonic() - self.started}

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description_str(self, desc: str) -> None:
        self.desc = desc
        self._maybe_print()

    def _maybe_print(self) -> None:
        if time.monotonic() - self.last_line >= self.every:
            self._print()

    def _print(self) -> None:
        self.last_line = time.monotonic()
        amount = f"{self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {self.unit}"
        print(f"{self.desc}: {amount}" + (f", {self.postfix}" if self.postfix else "")
              + f" ({self.format_dict['elapsed']:.0f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()


def progress_bar(iterable: Any = None, show: bool = True, **kwargs: Any):
    """A tqdm bar on a terminal, a LineProgress elsewhere, nothing (a disabled tqdm) when `show` is False."""
    from tqdm import tqdm

    if not show:
        return tqdm(iterable, disable=True, **kwargs)
    if interactive():
        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
