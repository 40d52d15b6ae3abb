"""Everything a training step needs, built one way for `cram pretrain`, `cram bench` and `cram plan`: the
model config checked against the data, backends, precision, model, optimizer, masking, micro-batch, step
(`build_training`); and for `cram pretrain` everything around it, in the order that matters (`build_run`).
Each check and each of its error messages lives here once.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crammer.config import to_dict
from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.model import (CrammedBertConfig, CrammedBertForMaskedLM, count_parameters, make_config,
                           training_flops_per_token)
from crammer.model.presets import check_positions
from crammer.runtime import configure_backends, resolve_precision, should_compile
from crammer.train.checkpoint import load_latest, set_rng_state
from crammer.train.config import PretrainConfig
from crammer.train.distributed import Distributed
from crammer.train.init_from import StartingModel, describe_fresh
from crammer.train.loader import BatchStream
from crammer.train.logger import StepLogger
from crammer.train.masking import MaskingSchedule, MLMCollator
from crammer.train.optimizers import build_optimizer
from crammer.train.resume import Resume, claim_run_dir, corpora_after_resume, corpus_record, rescaled_micro_batch
from crammer.train.sizing import auto_micro_batch, cuda_memory_probe
from crammer.train.state import Budget, BudgetClock, Pacing, TrainState
from crammer.train.step import TrainStep
from crammer.train.validation import VALIDATION_MASKING, Validator, tokens_per_character, validation_batches
from crammer.units import human


def model_config_for(cfg: PretrainConfig, vocab_size: int, seq_len: int, setting: str,
                     start: StartingModel | None = None) -> CrammedBertConfig:
    """The config's model for a vocabulary, checked against the vocabulary and the sequence length it will see
    (`setting` names where that length comes from) before anything is built: too long a sequence or an id past
    the embedding would otherwise fail in the first forward pass, after minutes of compiling on a GPU. With
    `cfg.init_from` the architecture is the starting model's (`start`, resolved here when not given)."""
    if cfg.init_from:
        config = (start or StartingModel.resolve(cfg.init_from)).model_config(cfg.model_settings, seq_len, setting)
    else:
        config = make_config(cfg.model, vocab_size, cfg.model_settings)
    if config.vocab_size < vocab_size:  # ids the embedding has no row for would fail deep in the first step
        raise CrammerError(f"model.vocab_size={config.vocab_size} is smaller than the data's vocabulary of "
                           f"{vocab_size} tokens; leave model.vocab_size unset")
    check_positions(seq_len, config, setting, f"the {cfg.model!r} model",
                    f"pass model.max_position_embeddings={seq_len} or use sequences of at most {{limit}} tokens")
    return config


def check_micro_batch(cfg: PretrainConfig, cuda: bool, prefix: str = "") -> None:
    """Auto-sizing the micro-batch needs a GPU to measure; `prefix` is where the key sits in the user's
    command (`pretrain.` under `cram run`)."""
    if cfg.batch.micro_batch is None and not cuda:
        raise CrammerError(f"{prefix}batch.micro_batch must be set without a GPU (auto-sizing needs CUDA), "
                           f"e.g. {prefix}batch.micro_batch=16")


@dataclass
class Training:
    """The pieces of pretraining one config builds; `model` is the plain module (not compiled by `step`,
    not wrapped), whose parameter names are what checkpoints store."""

    cfg: PretrainConfig
    device: torch.device
    precision: str
    model: CrammedBertForMaskedLM
    optimizer: torch.optim.Optimizer
    collator: MLMCollator

    def micro_batch(self, seq_len: int, target: int | None = None, memory_fraction: float | None = None) -> int:
        """The configured micro-batch, or the largest that fits `memory_fraction` of the GPU (the config's by
        default) evened to `target` sequences (the config's global batch by default). Probed in eager mode,
        so call it before `compile`."""
        if self.cfg.batch.micro_batch:
            return self.cfg.batch.micro_batch
        check_micro_batch(self.cfg, self.device.type == "cuda")
        return self.fit_micro_batch(seq_len, target or self.cfg.batch.target,
                                    memory_fraction or self.cfg.batch.memory_fraction)

    def fit_micro_batch(self, seq_len: int, target: int, memory_fraction: float) -> int:
        """The largest micro-batch that fits `memory_fraction` of the GPU, evened to `target` (CUDA only)."""
        fits = cuda_memory_probe(self.model, self.collator, seq_len, self.precision, memory_fraction)
        return auto_micro_batch(fits, target, self.device)

    def compile(self) -> bool:
        """torch.compile in place (parameter names and state_dict keys stay unchanged), where the config
        asks for it (`compile=None`: on CUDA)."""
        if not should_compile(self.cfg.compile, self.device):
            return False
        self.model.compile()
        return True

    def step(self, model: nn.Module | None = None) -> TrainStep:
        """The optimizer step over `model` (default: ours; a DDP wrapper or a compiled copy of it)."""
        return TrainStep(model or self.model, self.optimizer, self.cfg.optim, self.precision, self.device)


def build_training(cfg: PretrainConfig, model_config: CrammedBertConfig, special_tokens: dict[str, int],
                   device: torch.device) -> Training:
    """Backends, precision, the model initialised from `cfg.seed` on `device`, its optimizer, the MLM masking."""
    configure_backends(cfg.tf32)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = CrammedBertForMaskedLM(model_config).to(device)
    collator = MLMCollator(cfg.masking, model_config.vocab_size, special_tokens)
    return Training(cfg, device, precision, model, build_optimizer(model, cfg.optim), collator)


@dataclass
class RunParts:
    """Everything one pretraining run (one rank under DDP) is made of, built by `build_run`."""

    cfg: PretrainConfig
    run_dir: Path
    dist: Distributed
    corpus: PackedCorpus
    corpora: list[dict[str, Any]]  # the corpora this run trained on, in order (see crammer.train.resume)
    training: Training
    state: TrainState
    micro_batch: int
    train_step: TrainStep  # over the compiled and/or DDP-wrapped model
    tokenizer: Any  # saved with every checkpoint and with final/
    validator: Validator | None
    logger: StepLogger
    pacing: Pacing
    masking: MaskingSchedule
    stream: BatchStream
    corpus_record: dict[str, Any]  # what each checkpoint remembers of the corpus (see crammer.train.resume)
    init_from: dict[str, Any] | None  # the starting model's record (`--init-from`), else None
    fresh_start: bool  # no checkpoint was restored: the run starts at step 0


def build_run(cfg: PretrainConfig, data_dir: str | Path, run_dir: Path, resume: Resume, clock: BudgetClock
              ) -> RunParts:
    """A run, set up in the order that matters: every rank reads the corpus and they compare it; the model config
    is checked against it before the folder is claimed (a problem on any rank stops them all there); the
    micro-batch is sized in eager mode before compiling, and compiled before the DDP wrapper; a checkpoint
    restores weights, optimizer, counters, clock and random state; the data stream, whose prefetch thread nothing
    after it may leave running, starts last. With `cfg.init_from` the corpus's tokenizer is checked against the
    starting model's before the folder is claimed, and a fresh start loads its weights into the model the
    optimizer was built over."""
    cfg = cfg.validate()
    dist = Distributed.from_env()
    with dist.together():
        corpus = PackedCorpus(data_dir)
        start = StartingModel.resolve(cfg.init_from) if cfg.init_from else None
        if start is not None:
            start.check_tokenizer(corpus.path)
        model_config = model_config_for(cfg, corpus.vocab_size, corpus.seq_len, f"{corpus.path}: corpus seq_len",
                                        start)
    record = corpus_record(corpus)  # hashes tokenizer.json: once per run
    check_same_corpus(corpus, record, dist)
    with dist.together():
        resume = claim_run_dir(run_dir, cfg, resume, dist.is_main)

    training = build_training(cfg, model_config, corpus.special_tokens, dist.device)
    state, step_state = TrainState(), {}
    loaded = load_latest(run_dir, training.model, training.optimizer, dist.device) if resume else None
    if loaded:
        checkpoint, saved, step_state = loaded
        corpora = corpora_after_resume(corpus, record, checkpoint, saved, dist.is_main)  # before anything is said
        state.load_state_dict(saved)
        clock.spent_before = saved["elapsed"]
        micro_batch = rescaled_micro_batch(checkpoint, saved, dist.world_size)
        set_rng_state(step_state.pop("rng"))
        init_record = saved.get("init_from") or (start.record() if start is not None else None)
        if dist.is_main:  # after a restart, what the run goes on from
            print(f"cram: resuming from {checkpoint} (step {state.step}, {clock.spent_before:.0f}s of the budget "
                  "spent)", file=sys.stderr)
    else:
        init_record = None if start is None else _start_from(start, training.model, model_config, dist.is_main)
        corpora = [{"from_step": 0, **record}]
        target = max(1, cfg.batch.target // dist.world_size)
        micro_batch = dist.min_over_ranks(training.micro_batch(corpus.seq_len, target))
        if dist.is_main and not cfg.batch.micro_batch:
            print(f"cram: micro-batch {micro_batch} (fits {cfg.batch.memory_fraction:.0%} of GPU memory; "
                  f"divides the {cfg.batch.target}-sequence batch evenly)", file=sys.stderr)
    if dist.is_main:  # `--preset tiny model=original` is 111 M parameters: say what is being trained
        overrides = f" with {' '.join(cfg.model_overrides)}" if cfg.model_overrides else ""
        name = f"from {start.source} ({start.kind})" if start is not None else repr(cfg.model)
        print(f"cram: model {name}{overrides}: {model_config.num_hidden_layers} layers x "
              f"{model_config.hidden_size} hidden x {model_config.num_attention_heads} heads, "
              f"{human(count_parameters(training.model))} parameters", file=sys.stderr)
    training.compile()
    train_model: nn.Module = training.model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            training.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    train_step = training.step(train_model)
    train_step.load_state_dict(step_state)

    validator = _validator(cfg, corpus, micro_batch, dist, training.precision)
    budget = Budget(cfg.budget_seconds, cfg.budget_tokens)
    masking = MaskingSchedule(cfg.masking, micro_batch * dist.world_size * corpus.seq_len, cfg.budget_tokens)
    logger = StepLogger(run_dir, cfg.logging, dist.is_main, to_dict(cfg), dist.device,
                        training_flops_per_token(model_config, corpus.seq_len, masking.mean_fraction),
                        dist.world_size, budget)
    logger.resume_after(state.step)
    pacing = Pacing(budget, clock, cfg.checkpoint, cfg.eval, dist.world_size)
    try:
        stream = BatchStream(corpus, training.collator, micro_batch, order=cfg.data.order, seed=cfg.seed,
                             position=state.position, rank=dist.rank, world_size=dist.world_size,
                             prefetch=cfg.data.prefetch, pin_memory=dist.device.type == "cuda", mask_fraction=masking)
    except BaseException:
        logger.close()
        raise
    return RunParts(cfg, run_dir, dist, corpus, corpora, training, state, micro_batch, train_step,
                    corpus.tokenizer(), validator, logger, pacing, masking, stream, record, init_record, loaded is None)


def _start_from(start: StartingModel, model: CrammedBertForMaskedLM, config: CrammedBertConfig, is_main: bool
                ) -> dict[str, Any]:
    """Load the starting model's weights (a fresh start only: on --resume the checkpoint's win); its record."""
    fresh = start.load_into(model)
    if is_main:
        if config.max_position_embeddings > start.config.max_position_embeddings:
            print(f"cram: positions extended from {start.config.max_position_embeddings} to "
                  f"{config.max_position_embeddings} tokens ({config.position_embedding.replace('_', ' ')} positions "
                  "extend; config.json records the new maximum)", file=sys.stderr)
        line = describe_fresh(start.source, fresh)
        if line:
            print(line, file=sys.stderr)
    return start.record()


def corpus_digest(corpus: PackedCorpus, record: dict[str, Any]) -> str:
    """What identifies a corpus's bytes without reading them all: its recipe, tokenizer, block length (its
    `corpus_record`), shards and counts (preparing is deterministic: the same recipe on the same text gives the
    same bytes)."""
    manifest = corpus.manifest
    identity = {**record, "path": None, "dtype": manifest.dtype, "shards": manifest.shards,
                "validation_shards": manifest.validation_shards, "tokens": manifest.num_tokens,
                "tokenizer_fingerprint": manifest.tokenizer_fingerprint}
    return hashlib.sha256(repr(identity).encode()).hexdigest()


def check_same_corpus(corpus: PackedCorpus, record: dict[str, Any], dist: Distributed) -> None:
    """Every rank reads its own `--data` (a node-local copy is fine): all must hold the same corpus."""
    ranks = dist.gather((corpus_digest(corpus, record), dist.where, str(corpus.path)))
    differ = [(where, path) for digest, where, path in ranks if digest != ranks[0][0]]
    if differ:
        (where, path), more = differ[0], f" (and {len(differ) - 1} more ranks)" if len(differ) > 1 else ""
        raise CrammerError(f"{where}{more} read another corpus at {path} than {ranks[0][1]} at {ranks[0][2]} (recipe, "
                           "input files or tokenizer differ); prepare it with the same command and inputs on every "
                           "node, or put it on storage all nodes share")


def _validator(cfg: PretrainConfig, corpus: PackedCorpus, micro_batch: int, dist: Distributed,
               precision: str) -> Validator | None:
    """The fixed validation subset, or None (turned off, or a corpus without a validation split)."""
    if not cfg.eval.enabled:
        return None
    if not corpus.has_validation:
        if dist.is_main:
            print(f"cram: {corpus.path} has no validation split (prepared before it existed, or with "
                  "--validation-sequences 0): validation is skipped", file=sys.stderr)
        return None
    batches = validation_batches(corpus, VALIDATION_MASKING, cfg.eval.sequences, micro_batch)
    return Validator(batches, dist.device, precision, dist.rank, dist.world_size, tokens_per_character(corpus))
