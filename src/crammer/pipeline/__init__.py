"""What chains stages: `cram pretrain` (the training loop with its model card, `pretrain`) and `cram run` (data
preparation, budgeted pretraining, GLUE and the report in one resumable run folder: `run`; `state` writes
run.json; `presets`). Where each stage writes and which finished: `crammer.runfiles`."""

from crammer.lazy import lazy_exports

__all__ = ["pretrain"]
__getattr__, __dir__ = lazy_exports(__name__, {"pretrain": "crammer.pipeline.pretrain"})
