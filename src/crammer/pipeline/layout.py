"""Where each stage of `cram run` keeps its output inside RUN_DIR (one place, so nobody guesses)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def relative_to_run(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """A path inside the run folder relative to it (what the run's records hold, so that they stay true
    wherever the folder is moved or copied, and whatever the working directory); one outside it absolute."""
    path, run_dir = Path(path).expanduser().resolve(), Path(run_dir).expanduser().resolve()
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def data(self) -> Path:
        """The prepared corpus (reused when its recipe hash matches, see crammer.data.prepare)."""
        return self.root / "data"

    @property
    def pretrain(self) -> Path:
        """The pretraining run folder: checkpoints, metrics.jsonl and final/."""
        return self.root / "pretrain"

    @property
    def final(self) -> Path:
        """The pretrained model as a Hugging Face folder (written by pretraining when it completes)."""
        return self.pretrain / "final"

    @property
    def glue(self) -> Path:
        return self.root / "glue"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"
