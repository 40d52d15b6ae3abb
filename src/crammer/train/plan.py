"""`cram plan`: what a wall-clock budget buys on this machine, before spending it.

The planner measures this machine's pretraining throughput with a short real benchmark, then does
plain arithmetic (formulas below, also printed with the plan):

    tokens      = measured tokens/s x (budget - measured start-up, i.e. model build + compile)
    passes      = tokens / tokens in the prepared corpus         (the recipe assumes <= 1 pass)
    FLOPs       = tokens x training FLOPs/token of the preset   (forward + backward, model stage)

and compares the FLOPs with two reference runs:

    1xA6000 for 24 h (cramming paper): 105k tokens/s measured, i.e. 154.8 TFLOP/s (the A6000's dense
        bf16 tensor peak; 309.7 is its 2:4-sparse figure) x ~42% utilisation x 86,400 s
    BERT-base (Devlin et al. 2019): 1M steps x 256 sequences x 512 tokens, 6 x N x D with N = 110M
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from crammer.data import PackedCorpus
from crammer.model import count_parameters, training_flops_per_token
from crammer.runtime import synchronize
from crammer.train.config import PretrainConfig
from crammer.train.masking import MaskingSchedule
from crammer.train.metrics import peak_flops
from crammer.train.schedules import accumulation_steps
from crammer.train.setup import build_training, check_micro_batch, model_config_for
from crammer.units import duration, human

A6000_DENSE_BF16_FLOPS = 154.8e12
A6000_UTILISATION = 0.42
A6000_TOKENS_PER_S = 105_000
REFERENCE_SECONDS = 24 * 3600
BERT_BASE_PARAMS = 110e6
BERT_BASE_TOKENS = 1_000_000 * 256 * 512


@dataclass(frozen=True)
class ReferenceRun:
    name: str
    tokens: float
    flops: float
    formula: str


def reference_runs() -> list[ReferenceRun]:
    """The two runs every plan is compared with, with the formula each figure comes from."""
    return [
        ReferenceRun(
            "1xA6000, 24 h (cramming)",
            tokens=A6000_TOKENS_PER_S * REFERENCE_SECONDS,
            flops=A6000_DENSE_BF16_FLOPS * A6000_UTILISATION * REFERENCE_SECONDS,
            formula="154.8e12 FLOP/s x 0.42 x 86,400 s; tokens = 105k/s x 86,400 s",
        ),
        ReferenceRun(
            "BERT-base (Devlin et al.)",
            tokens=BERT_BASE_TOKENS,
            flops=6 * BERT_BASE_PARAMS * BERT_BASE_TOKENS,
            formula="6 x N x D, N = 110e6 params, D = 1e6 steps x 256 x 512 tokens",
        ),
    ]


@dataclass
class Plan:
    """Measured throughput + preset + corpus -> what the budget will consume."""

    preset: str
    device: str
    budget_s: float
    tokens_per_s: float
    flops_per_token: float
    num_parameters: int
    corpus_tokens: int
    seq_len: int
    micro_batch: int
    accumulation: int
    startup_s: float = 0.0  # model build + compile + warm-up: spent from the budget, no tokens
    peak_flops: float | None = None  # the accelerator's dense bf16 peak, for MFU (None: unknown, e.g. CPU)
    notes: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.micro_batch * self.accumulation

    @property
    def tokens(self) -> float:
        return self.tokens_per_s * max(self.budget_s - self.startup_s, 0.0)

    @property
    def passes(self) -> float:
        return self.tokens / self.corpus_tokens if self.corpus_tokens else math.inf

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token

    @property
    def steps(self) -> float:
        return self.tokens / (self.batch_size * self.seq_len)

    def warnings(self) -> list[str]:
        out = []
        if self.passes > 1:
            runs_out = self.startup_s + self.corpus_tokens / self.tokens_per_s
            out.append(
                f"the data runs out after {duration(runs_out)} of the {duration(self.budget_s)} budget "
                f"and will be repeated ({self.passes:.2f} passes); the recipe assumes a single pass: "
                f"prepare about {self.tokens / 1e9:.2f}B tokens"
            )
        return out


def format_plan(plan: Plan) -> str:
    """The plan as the text `cram plan` prints."""
    lines = [
        f"plan for preset {plan.preset!r} on {plan.device}, budget {duration(plan.budget_s)}",
        "",
        f"  measured throughput   {plan.tokens_per_s:,.0f} tokens/s "
        f"(after {plan.startup_s:.1f} s of model build, compile and warm-up)",
        "  model FLOPs util.     "
        + (f"{plan.tokens_per_s * plan.flops_per_token / plan.peak_flops:.1%} of {human(plan.peak_flops, 'FLOP/s')}"
           if plan.peak_flops else "n/a (no known peak for this device)"),
        f"  model                 {plan.num_parameters / 1e6:.1f}M parameters, "
        f"{human(plan.flops_per_token, 'FLOP')}/token (training)",
        f"  batch                 {plan.batch_size} sequences x {plan.seq_len} tokens = "
        f"micro-batch {plan.micro_batch} x {plan.accumulation} accumulation steps",
        f"  tokens in budget      {human(plan.tokens)} (~{human(plan.steps)} optimizer steps at the full batch)",
        f"  prepared corpus       {human(plan.corpus_tokens)} tokens -> {plan.passes:.3g} passes over the data",
        f"  FLOP budget           {human(plan.flops, 'FLOP')}",
        "",
        "  compared with                     tokens      FLOPs  this plan / reference",
    ]
    for ref in reference_runs():
        lines.append(
            f"  {ref.name:<32}  {human(ref.tokens):>9}  {human(ref.flops, 'FLOP'):>9}  "
            f"{plan.flops / ref.flops:>9.3g}x  [{ref.formula}]"
        )
    lines += [
        "",
        "  formulas: tokens = tokens/s x (budget - start-up); passes = tokens / corpus tokens; "
        "FLOPs = tokens x training FLOPs/token",
    ]
    for note in plan.notes:
        lines.append(f"  note: {note}")
    for warning in plan.warnings():
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)


def measure_plan(cfg: PretrainConfig, corpus: PackedCorpus, preset: str, budget_s: float, seconds: float) -> Plan:
    """Time real optimizer steps of `cfg` on blocks of `corpus` for about `seconds`; plan `budget_s`.

    Uses the pretraining set-up itself (`build_training`: model, AdamW, precision, masking, micro-batch,
    compile, TrainStep), one micro-batch per step: accumulation only repeats that work, so tokens/s carries
    over to the ramp.
    """
    model_config = model_config_for(cfg, corpus.vocab_size, corpus.seq_len, f"{corpus.path}: corpus seq_len")
    started = time.monotonic()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    check_micro_batch(cfg, device.type == "cuda")
    training = build_training(cfg, model_config, corpus.special_tokens, device)
    micro_batch = training.micro_batch(corpus.seq_len)
    training.compile()
    step = training.step()
    generator = torch.Generator().manual_seed(cfg.seed)
    next_row = 0

    def batch():
        nonlocal next_row
        rows = (np.arange(micro_batch) + next_row) % len(corpus)
        next_row += micro_batch
        return training.collator(torch.from_numpy(corpus.get_batch(rows)), generator).to(device)

    for _ in range(3):  # warm-up: compilation, allocator, kernel autotuning
        step([batch()], cfg.optim.lr)
    synchronize(device)
    startup = time.monotonic() - started
    steps, timed_from = 0, time.monotonic()
    while steps < 3 or time.monotonic() - timed_from < seconds:
        step([batch()], cfg.optim.lr)
        steps += 1
        if steps % 10 == 0:
            synchronize(device)
    synchronize(device)
    tokens_per_s = steps * micro_batch * corpus.seq_len / (time.monotonic() - timed_from)
    return Plan(
        preset=preset,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        budget_s=budget_s,
        tokens_per_s=tokens_per_s,
        flops_per_token=training_flops_per_token(model_config, corpus.seq_len,
                                                 MaskingSchedule(cfg.masking).mean_fraction),
        num_parameters=count_parameters(training.model),
        corpus_tokens=corpus.num_tokens,
        seq_len=corpus.seq_len,
        micro_batch=micro_batch,
        accumulation=accumulation_steps(1.0, cfg.batch, micro_batch),
        startup_s=startup,
        peak_flops=peak_flops(device, cfg.logging.peak_tflops),
        notes=[f"timed {steps} optimizer steps of one micro-batch ({training.precision}) after 3 warm-up steps"],
    )
