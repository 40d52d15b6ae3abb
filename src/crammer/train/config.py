"""The pretraining recipe as one typed, nested dataclass with named presets.

Defaults are the cramming paper's final recipe (Geiping & Goldstein, 2022). Every field is a
`key=value` override on the command line (`optim.lr=5e-4`, `batch.micro_batch=64`); keys starting with
`model.` are checked against the model's config and kept for `crammer.model.make_config`
(`model.num_hidden_layers=4`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from crammer.config import apply_overrides, check_literals, pick_preset
from crammer.errors import CrammerError


def _route_model_override(key: str, value: str) -> str:
    """`model.K=V` is kept as the `K=V` string the run's config records; `PretrainConfig.model_settings` parses
    it (once), when the config is validated."""
    return f"{key}={value}"


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer (`name`, built by crammer.train.optimizers); weight decay applies to matrices only (not
    norms, biases or 1-d scales)."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-12
    weight_decay: float = 0.01
    grad_clip: float = 0.5  # max global grad norm; 0 = no clipping
    fused: bool = True  # fused AdamW kernel (also lets a non-finite step be skipped without a host sync)
    # name=muon: torch.optim.Muon for the blocks' 2-D weight matrices, AdamW (the keys above) for the rest.
    muon_lr: float | None = None  # None: optim.lr (with muon_adjust_lr=match_rms_adamw AdamW's lr carries over)
    muon_weight_decay: float | None = None  # None: optim.weight_decay
    muon_momentum: float = 0.95
    muon_adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate shape as a function of budget progress in [0, 1] (see schedules.py)."""

    lr: Literal["triangle", "one-cycle", "linear", "wsd"] = "triangle"
    peak: float = 0.75  # progress at which the lr reaches its peak (end of warm-up); for wsd try 0.1
    initial: float = 0.25  # lr at progress 0, as a fraction of the peak (triangle, one-cycle)
    decay: float = 0.2  # wsd only: final fraction of the budget spent decaying to zero
    decay_shape: Literal["linear", "sqrt"] = "linear"  # wsd only: sqrt = 1 - sqrt(t) (ModernBERT's), t in [0, 1]


@dataclass(frozen=True)
class BatchConfig:
    """Global batch ramped by gradient accumulation from one micro-batch to `target` sequences."""

    micro_batch: int | None = None  # sequences per device per forward; None = largest that fits the GPU
    target: int = 8192  # global batch (sequences) at the end of the ramp
    ramp: float = 0.6  # progress at which the batch reaches `target`
    memory_fraction: float = 0.92  # auto-sizing: use at most this share of the GPU's memory


@dataclass(frozen=True)
class MaskingConfig:
    """Masked LM: a fixed count of positions per row (static shapes), BERT's 80/10/10 corruption."""

    fraction: float = 0.25
    schedule: Literal["constant", "linear"] = "constant"  # linear: from `fraction` to `final_fraction` over the budget
    final_fraction: float = 0.15  # schedule=linear only
    replace_mask: float = 0.8  # share of chosen positions replaced by [MASK]
    replace_random: float = 0.1  # ... by a random (non-special) token; the rest stay unchanged


@dataclass(frozen=True)
class StreamConfig:
    """How pretraining reads the prepared corpus (the corpus itself is `crammer.data.config.CorpusConfig`)."""

    order: Literal["stored", "shuffled"] = "stored"  # stored = the order `cram data prepare` chose
    prefetch: int = 4  # micro-batches prepared ahead by the background thread


@dataclass(frozen=True)
class CheckpointConfig:
    every_seconds: float = 1800.0  # time-based checkpoints; 0 = off
    every_steps: int = 0  # step-based checkpoints (handy for short runs); 0 = off
    keep: int = 3  # keep the newest K checkpoints


@dataclass(frozen=True)
class EvalConfig:
    """Validation loss and accuracy on the corpus's held-out documents (see crammer.train.validation), during
    the run and once at its end. Evaluation time is spent from the budget."""

    every_seconds: float | None = None  # None: as often as keeps evaluation within `max_share` of the time
    every_steps: int = 0  # also (or instead) every N optimizer steps; 0 = off
    max_share: float = 0.02  # with every_seconds=None: evaluation's share of the elapsed budget at most
    sequences: int = 1024  # the fixed subset: the first N validation blocks

    @property
    def enabled(self) -> bool:
        """every_seconds=0 and every_steps=0 turn validation off (none during the run, none at its end)."""
        return self.every_seconds != 0 or self.every_steps > 0


@dataclass(frozen=True)
class GuardConfig:
    """What to do about non-finite losses: skip each one; after a streak roll back or stop."""

    max_nonfinite_in_a_row: int = 5
    max_rollbacks: int = 2


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 10  # a metrics.jsonl line every N optimizer steps
    tensorboard: bool = False  # also write TensorBoard event files to RUN_DIR/tensorboard
    wandb: bool = False  # also log to Weights & Biases (a resumed run continues the same W&B run)
    wandb_project: str = "crammer"
    peak_tflops: float | None = None  # accelerator peak for MFU; None = look the GPU up in a table


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "crammed-bert"  # model preset of crammer.model.make_config
    model_overrides: tuple[str, ...] = ()  # `key=value` strings for make_config (from `model.X=...`)
    # Start from this model's weights and architecture (a folder or hub id; see crammer.train.init_from), not
    # from scratch: `model` is then unused and `model_overrides` may change only dropout-like settings.
    init_from: str | None = None
    budget_seconds: float | None = 24 * 3600.0  # wall-clock budget (compile and start-up count)
    budget_tokens: int | None = None  # token-count budget instead: reproducible runs
    seed: int = 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16, else fp16+scaler; fp32 on CPU
    tf32: bool = True
    compile: bool | None = None  # torch.compile; None = on for CUDA, off on CPU
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: StreamConfig = field(default_factory=StreamConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # `model.K=V` overrides: stored in `model_overrides`, parsed by `model_settings`.
    OVERRIDE_ROUTES = {"model": ("model_overrides", _route_model_override)}

    def __post_init__(self) -> None:
        check_literals(self, "pretrain config ")

    @functools.cached_property
    def model_settings(self) -> dict[str, Any]:
        """`model_overrides` parsed by the model's own parser (its keys and types), once per config."""
        from crammer.model.presets import parse_model_overrides

        return parse_model_overrides(self.model_overrides)

    def validate(self) -> "PretrainConfig":
        """Raise a CrammerError naming the first field out of range (ranges may depend on each other, so
        they are checked once the config is complete, not after each override)."""
        check_literals(self, "pretrain config ")
        from crammer.model.presets import MODEL_PRESETS

        pick_preset(MODEL_PRESETS, self.model, "model preset")
        self.model_settings  # noqa: B018 -- parsed here, so that a typo fails before any work
        if self.init_from is not None and not self.init_from.strip():
            raise CrammerError("pretrain config init_from: empty; name a model folder or hub id")
        if (self.budget_seconds is None) == (self.budget_tokens is None):
            raise CrammerError("set exactly one budget: budget_seconds (--budget) or budget_tokens (--budget-tokens)")
        checks = [
            ("budget_seconds", self.budget_seconds is None or self.budget_seconds > 0),
            ("budget_tokens", self.budget_tokens is None or self.budget_tokens > 0),
            ("optim.lr", 0 < self.optim.lr < math.inf),
            ("optim.betas", len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas)),
            ("optim.eps", self.optim.eps > 0),
            ("optim.weight_decay", self.optim.weight_decay >= 0),
            ("optim.grad_clip", self.optim.grad_clip >= 0),
            ("optim.muon_lr", self.optim.muon_lr is None or self.optim.muon_lr > 0),
            ("optim.muon_weight_decay", self.optim.muon_weight_decay is None or self.optim.muon_weight_decay >= 0),
            ("optim.muon_momentum", 0 <= self.optim.muon_momentum < 1),
            ("schedule.peak", 0 <= self.schedule.peak <= 1),
            ("schedule.initial", 0 <= self.schedule.initial <= 1),
            ("schedule.decay", 0 < self.schedule.decay <= 1 - self.schedule.peak or self.schedule.lr != "wsd"),
            ("batch.micro_batch", self.batch.micro_batch is None or self.batch.micro_batch > 0),
            ("batch.target", self.batch.target > 0),
            ("batch.ramp", 0 <= self.batch.ramp <= 1),
            ("batch.memory_fraction", 0 < self.batch.memory_fraction <= 1),
            ("masking.fraction", 0 < self.masking.fraction < 1),
            ("masking.final_fraction", 0 < self.masking.final_fraction < 1),
            ("masking.replace_mask", 0 <= self.masking.replace_mask <= 1),
            ("masking.replace_random", 0 <= self.masking.replace_random <= 1 - self.masking.replace_mask),
            ("data.prefetch", self.data.prefetch >= 1),
            ("checkpoint.every_seconds", self.checkpoint.every_seconds >= 0),
            ("checkpoint.every_steps", self.checkpoint.every_steps >= 0),
            ("checkpoint.keep", self.checkpoint.keep >= 1),
            ("eval.every_seconds", self.eval.every_seconds is None or self.eval.every_seconds >= 0),
            ("eval.every_steps", self.eval.every_steps >= 0),
            ("eval.max_share", 0 < self.eval.max_share < 1),
            ("eval.sequences", self.eval.sequences >= 1),
            ("guard.max_nonfinite_in_a_row", self.guard.max_nonfinite_in_a_row >= 1),
            ("guard.max_rollbacks", self.guard.max_rollbacks >= 0),
            ("logging.every_steps", self.logging.every_steps >= 1),
            ("logging.peak_tflops", self.logging.peak_tflops is None or self.logging.peak_tflops > 0),
        ]
        for name, ok in checks:
            if not ok:
                value = self
                for part in name.split("."):
                    value = getattr(value, part)
                raise CrammerError(f"pretrain config {name}={value!r} is out of range")
        return self


def _preset(**sections) -> PretrainConfig:
    cfg = PretrainConfig()
    for name, values in sections.items():
        current = getattr(cfg, name)
        new = dataclasses.replace(current, **values) if isinstance(values, dict) else values
        cfg = dataclasses.replace(cfg, **{name: new})
    return cfg


PRESETS: dict[str, PretrainConfig] = {
    # The paper's final recipe for one GPU and 24 hours.
    "crammed-bert": PretrainConfig(),
    # The same recipe for the ModernBERT-shaped model (exports to a native `modernbert` folder).
    "modernbert": PretrainConfig(model="modernbert"),
    # The paper's size and budget with what the recipe study (BENCHMARKS.md, "Recipe ablations") found better at
    # two sizes: the ModernBERT block (rotary positions above all), Muon for the blocks' matrices, 40% masking.
    # Not the default until a GPU run at the full size confirms it.
    "crammed-bert-plus": _preset(model="modernbert", optim={"name": "muon"}, masking={"fraction": 0.4}),
    # Seconds-long CPU runs for the tests.
    "tiny": _preset(
        model="tiny",
        batch={"micro_batch": 8, "target": 32},
        optim={"lr": 2e-3},
        logging={"every_steps": 1},
        checkpoint={"every_seconds": 0.0},
        eval={"sequences": 64},
    ),
    # A few-minute end-to-end demo on a laptop CPU.
    "demo": _preset(
        model="small",
        batch={"micro_batch": 16, "target": 256},
        logging={"every_steps": 5},
        checkpoint={"every_seconds": 60.0},  # a checkpoint half-way through the 2-minute demo: a kill mid-run resumes
        eval={"sequences": 128},
    ),
}


def make_pretrain_config(
    preset: str = "crammed-bert",
    overrides: Sequence[str] = (),
    budget_seconds: float | None = None,
    budget_tokens: int | None = None,
    init_from: str | None = None,
) -> PretrainConfig:
    """A preset with `key=value` overrides (`model.X=...` keys for the model's make_config).

    A budget given here replaces the preset's (the preset default is 24 h of wall clock); `init_from` (a model
    folder or hub id) starts the run from that model's weights.
    """
    cfg = apply_overrides(pick_preset(PRESETS, preset, "pretrain preset"), overrides)
    if init_from is not None:
        cfg = dataclasses.replace(cfg, init_from=init_from)
    if budget_tokens is not None:
        cfg = dataclasses.replace(cfg, budget_tokens=int(budget_tokens), budget_seconds=None)
    elif budget_seconds is not None:
        cfg = dataclasses.replace(cfg, budget_seconds=float(budget_seconds), budget_tokens=None)
    return cfg.validate()
