"""The fine-tuning protocol as a typed dataclass, with the `sane` and `full` presets.

`sane` is the cramming paper's "GLUE-sane" rule set (cramming's `eval/GLUE_sane.yaml` with
`optim/adam.yaml`): one hyper-parameter set for every task, a fixed number of epochs, the score taken after
the last one, the median over several seeds. `FinetuneConfig` is the protocol itself (what `cram finetune`
uses); `GlueConfig` adds which GLUE tasks to run and where their files are. Every field is a `key=value`
override (`lr=3e-5`, `max_train_examples=1000`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

from crammer.config import apply_overrides, check_literals, config_hash, pick_preset, to_dict
from crammer.errors import CrammerError
from crammer.eval.tasks import ALL_TASKS, parse_tasks


@dataclass(frozen=True)
class FinetuneConfig:
    protocol: str = "sane"  # name of the preset this config started from (shown in the results)
    trials: int = 5  # fine-tuning runs per task, seeds seed, seed+1, ...; the median is reported
    seed: int = 0
    # optimisation (the same for every task)
    lr: float = 4e-5
    batch_size: int = 16
    epochs: int = 5
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_fraction: float = 0.1  # share of all steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW, on matrices only (not biases, norms, 1-d scales)
    adam_betas: tuple[float, float] = (0.9, 0.98)  # AdamW; no gradient clipping (as in cramming)
    adam_eps: float = 1e-6
    max_length: int = 128  # tokens per (pair of) sentence(s); longer inputs are truncated
    dropout: float = 0.1  # set on every dropout field the model's config has
    # batching
    eval_batch_size: int = 128
    bucket_batches: int = 50  # length bucketing: sort by length within windows of this many batches; 1 = off
    pad_multiple: int | None = None  # pad each batch to a multiple of this; None = 8 on CUDA (tensor cores), 1 on CPU
    # subsets, for smoke runs and tests (0 = the whole split); a fixed random subset, the same for all trials
    max_train_examples: int = 0
    max_eval_examples: int = 0
    # hardware
    device: str = "auto"  # auto = cuda when available, else cpu
    # auto = bf16 autocast where the GPU supports it or the CPU does bf16 natively (AVX512-BF16, AMX), else fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool | None = None  # torch.compile (dynamic shapes); None = on for CUDA, off on CPU
    # data
    skip_malformed_rows: bool = False  # drop rows with missing fields / unknown labels instead of failing

    WHERE: ClassVar[str] = "finetune config"
    # `protocol=` would only relabel the results: the preset's hyper-parameters come from the protocol's name.
    FIXED_KEYS: ClassVar[dict[str, str]] = {
        "protocol": "it would relabel the results without changing the hyper-parameters; `cram glue` and "
                    "`cram finetune` pick the preset with --protocol, `cram run` with --glue-protocol"}

    def __post_init__(self) -> None:
        """Every value is checked here, so a config that exists is one a run accepts (bar the model and
        the machine: see `finetune.check_max_length` and `crammer.runtime.resolve_device`)."""
        where = f"{self.WHERE}: "
        for name in ("trials", "batch_size", "epochs", "max_length", "eval_batch_size", "bucket_batches"):
            if getattr(self, name) < 1:
                raise CrammerError(f"{where}{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_multiple is not None and self.pad_multiple < 1:
            raise CrammerError(f"{where}pad_multiple must be >= 1 (or none = auto), got {self.pad_multiple}")
        if self.max_train_examples < 0 or self.max_eval_examples < 0:
            raise CrammerError(f"{where}max_train_examples / max_eval_examples must be >= 0 (0 = all)")
        if not 0 <= self.seed <= 2**32 - self.trials:  # numpy seeds every trial: seed + trials - 1 < 2**32
            raise CrammerError(f"{where}seed must be in 0..{2**32 - self.trials}, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CrammerError(f"{where}lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise CrammerError(f"{where}weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise CrammerError(f"{where}adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not (self.adam_eps > 0 and math.isfinite(self.adam_eps)):
            raise CrammerError(f"{where}adam_eps must be a positive number, got {self.adam_eps}")
        check_literals(self, where)
        if not 0 <= self.warmup_fraction < 1:
            raise CrammerError(f"{where}warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.dropout < 1:
            raise CrammerError(f"{where}dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    def trial_key(self, model_id: str, data: str | None = None) -> str:
        """Identity of a trial (the model, as `finetune.model_identity` names it, the recipe, and for
        `cram finetune` the data's fingerprint): results made under another key are never mixed in on resume."""
        recipe = {k: v for k, v in to_dict(self).items() if k in _RECIPE_FIELDS}
        return config_hash({"model": model_id, **recipe, **({"data": data} if data is not None else {})})


@dataclass(frozen=True)
class GlueConfig(FinetuneConfig):
    tasks: tuple[str, ...] = ALL_TASKS
    glue_dir: str | None = None  # local glue_data folder; None = the Hugging Face hub (nyu-mll/glue)

    WHERE: ClassVar[str] = "glue config"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tasks", parse_tasks(self.tasks))


# Fields that change what a trial computes (tasks, trials, data location, padding and hardware do not).
# Bucketing changes which examples share a batch; skipping malformed rows changes the data itself.
_RECIPE_FIELDS = ("seed", "lr", "batch_size", "epochs", "schedule", "warmup_fraction", "weight_decay",
                  "adam_betas", "adam_eps", "max_length", "dropout", "max_train_examples", "max_eval_examples",
                  "bucket_batches", "skip_malformed_rows")

# The protocols' hyper-parameters, for `cram glue` and `cram finetune` alike. `full` is BERT's usual recipe
# and keeps PyTorch's AdamW defaults.
_PROTOCOL_VALUES: dict[str, dict] = {
    "sane": {},
    "full": dict(lr=2e-5, batch_size=32, epochs=10, schedule="linear", warmup_fraction=0.06, weight_decay=0.1,
                 adam_betas=(0.9, 0.999), adam_eps=1e-8),
}
PROTOCOLS: dict[str, GlueConfig] = {name: GlueConfig(protocol=name, **v) for name, v in _PROTOCOL_VALUES.items()}
FINETUNE_PROTOCOLS: dict[str, FinetuneConfig] = {name: FinetuneConfig(protocol=name, **v)
                                                 for name, v in _PROTOCOL_VALUES.items()}


def make_glue_config(protocol: str = "sane", overrides: Sequence[str] = ()) -> GlueConfig:
    """A protocol preset with `key=value` overrides applied (typed and validated)."""
    return apply_overrides(pick_preset(PROTOCOLS, protocol, "GLUE protocol"), overrides)


def make_finetune_config(protocol: str = "sane", overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The same protocols for `cram finetune`, without GLUE's task list and folder."""
    return apply_overrides(pick_preset(FINETUNE_PROTOCOLS, protocol, "fine-tuning protocol"), overrides)
