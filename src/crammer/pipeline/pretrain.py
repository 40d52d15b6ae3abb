"""`cram pretrain`: budgeted pretraining (`crammer.train`) whose final/ folder carries its model card
(`crammer.hub`). Composed here, above both, so that training never imports the card writer."""

from __future__ import annotations

from pathlib import Path

from crammer.hub.card import write_run_card
from crammer.train.config import PretrainConfig
from crammer.train.loop import pretrain as pretrain_loop


def pretrain(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False) -> Path:
    """Pretrain within the budget (see `crammer.train.loop.pretrain`); RUN_DIR/final carries a model card."""
    return pretrain_loop(cfg, data_dir, out_dir, resume, model_card=write_run_card)
