"""Budgeted pretraining: the loop of `cram pretrain` (`pretrain`; `crammer.pipeline.pretrain` adds the model
card), schedules, masking, checkpoints, metrics; `cram plot`, `cram bench`, `cram validate` and `cram plan`.

Pieces to build on: `build_training` (model, optimizer, precision, masking, micro-batch and the `TrainStep`
of a config, as pretraining, `cram bench` and `cram plan` use them), `build_run` (a whole run, in order),
`build_optimizer` (by `optim.name`), `BatchStream`, `Pretrainer`.
Names are imported on first use (see crammer.lazy).
"""

from crammer.lazy import lazy_exports

__all__ = ["PRESETS", "BatchStream", "MLMCollator", "MaskedBatch", "PretrainConfig", "Pretrainer", "TrainStep",
           "Training", "TrainingInterrupted", "build_optimizer", "build_run", "build_training", "make_pretrain_config",
           "pretrain"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "PRESETS": "crammer.train.config", "PretrainConfig": "crammer.train.config",
    "make_pretrain_config": "crammer.train.config", "BatchStream": "crammer.train.loader",
    "MLMCollator": "crammer.train.masking", "MaskedBatch": "crammer.train.masking",
    "Pretrainer": "crammer.train.loop", "TrainingInterrupted": "crammer.train.loop", "pretrain": "crammer.train.loop",
    "TrainStep": "crammer.train.step", "Training": "crammer.train.setup", "build_training": "crammer.train.setup",
    "build_run": "crammer.train.setup", "build_optimizer": "crammer.train.optimizers",
})
