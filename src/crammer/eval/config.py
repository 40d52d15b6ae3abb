"""The GLUE fine-tuning protocol as a typed dataclass, with the `sane` and `full` presets.

`sane` is the cramming paper's "GLUE-sane" rule set: one hyper-parameter set for every task, a fixed
number of epochs, the score taken after the last one, the median over several seeds. Every field is a
`key=value` override (`lr=3e-5`, `max_train_examples=1000`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from crammer.config import apply_overrides, check_literals, config_hash, pick_preset, to_dict
from crammer.errors import CrammerError
from crammer.eval.tasks import ALL_TASKS, parse_tasks


@dataclass(frozen=True)
class GlueConfig:
    protocol: str = "sane"  # name of the preset this config started from (shown in the results)
    tasks: tuple[str, ...] = ALL_TASKS
    trials: int = 5  # fine-tuning runs per task, seeds seed, seed+1, ...; the median is reported
    seed: int = 0
    # optimisation (the same for every task)
    lr: float = 4e-5
    batch_size: int = 16
    epochs: int = 5
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_fraction: float = 0.1  # share of all steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW, on matrices only (not biases, norms, 1-d scales)
    max_length: int = 128  # tokens per (pair of) sentence(s); longer inputs are truncated
    dropout: float = 0.1  # set on every dropout field the model's config has
    # batching
    eval_batch_size: int = 128
    bucket_batches: int = 50  # length bucketing: sort by length within windows of this many batches; 1 = off
    pad_multiple: int = 8  # pad each batch to a multiple of this many tokens (tensor-core friendly)
    # subsets, for smoke runs and tests (0 = the whole split); a fixed random subset, the same for all trials
    max_train_examples: int = 0
    max_eval_examples: int = 0
    # hardware
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast where CUDA supports it
    compile: bool | None = None  # torch.compile (dynamic shapes); None = on for CUDA, off on CPU
    # data
    glue_dir: str | None = None  # local glue_data folder; None = the Hugging Face hub (nyu-mll/glue)
    skip_malformed_rows: bool = False  # drop rows with missing fields / unknown labels instead of failing

    # `protocol=` would only relabel the results: the preset's hyper-parameters come from the protocol's name.
    FIXED_KEYS = {"protocol": "it would relabel the results without changing the hyper-parameters; `cram glue` "
                              "picks the preset with --protocol, `cram run` with --glue-protocol"}

    def __post_init__(self) -> None:
        """Every value is checked here, so a config that exists is one a run accepts (bar the model and
        the machine: see `finetune.check_max_length` and `crammer.runtime.resolve_device`)."""
        for name in ("trials", "batch_size", "epochs", "max_length", "eval_batch_size", "bucket_batches",
                     "pad_multiple"):
            if getattr(self, name) < 1:
                raise CrammerError(f"glue config: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_train_examples < 0 or self.max_eval_examples < 0:
            raise CrammerError("glue config: max_train_examples / max_eval_examples must be >= 0 (0 = all)")
        if not 0 <= self.seed <= 2**32 - self.trials:  # numpy seeds every trial: seed + trials - 1 < 2**32
            raise CrammerError(f"glue config: seed must be in 0..{2**32 - self.trials}, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CrammerError(f"glue config: lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise CrammerError(f"glue config: weight_decay must be >= 0, got {self.weight_decay}")
        check_literals(self, "glue config: ")
        if not 0 <= self.warmup_fraction < 1:
            raise CrammerError(f"glue config: warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.dropout < 1:
            raise CrammerError(f"glue config: dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "tasks", parse_tasks(self.tasks))

    def trial_key(self, model_id: str) -> str:
        """Identity of a trial (the model, as `finetune.model_identity` names it, and the recipe):
        results made under another key are never mixed in on resume."""
        recipe = {k: v for k, v in to_dict(self).items() if k in _RECIPE_FIELDS}
        return config_hash({"model": model_id, **recipe})


# Fields that change what a trial computes (tasks, trials, data location, padding and hardware do not).
# Bucketing changes which examples share a batch; skipping malformed rows changes the data itself.
_RECIPE_FIELDS = ("seed", "lr", "batch_size", "epochs", "schedule", "warmup_fraction", "weight_decay",
                  "max_length", "dropout", "max_train_examples", "max_eval_examples", "bucket_batches",
                  "skip_malformed_rows")

PROTOCOLS: dict[str, GlueConfig] = {
    "sane": GlueConfig(protocol="sane"),
    "full": GlueConfig(protocol="full", lr=2e-5, batch_size=32, epochs=10, schedule="linear",
                       warmup_fraction=0.06, weight_decay=0.1),
}


def make_glue_config(protocol: str = "sane", overrides: Sequence[str] = ()) -> GlueConfig:
    """A protocol preset with `key=value` overrides applied (typed and validated)."""
    return apply_overrides(pick_preset(PROTOCOLS, protocol, "GLUE protocol"), overrides)
