"""Budgeted pretraining: `cram pretrain` (loop, schedules, masking, checkpoints, metrics) and `cram plot`.

The pieces `cram bench` reuses: `build_model_and_optimizer`, `TrainStep`, `MLMCollator`, `BatchStream`.
"""

from crammer.train.config import PRESETS, PretrainConfig, make_pretrain_config
from crammer.train.loader import BatchStream
from crammer.train.loop import Pretrainer, TrainingInterrupted, pretrain
from crammer.train.masking import MaskedBatch, MLMCollator
from crammer.train.step import TrainStep, build_model_and_optimizer, resolve_precision

__all__ = [
    "PRESETS",
    "BatchStream",
    "MLMCollator",
    "MaskedBatch",
    "PretrainConfig",
    "Pretrainer",
    "TrainStep",
    "TrainingInterrupted",
    "build_model_and_optimizer",
    "make_pretrain_config",
    "pretrain",
    "resolve_precision",
]
