"""Where each stage of `cram run` keeps its output inside RUN_DIR (one place, so nobody guesses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
