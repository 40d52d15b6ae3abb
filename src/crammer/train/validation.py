"""Validation MLM loss and accuracy on a prepared corpus's held-out documents.

The subset and its masks are fixed: the first `sequences` validation blocks, masked by the default MLM
recipe (`VALIDATION_MASKING`: 25%, 80/10/10, whatever the run's own masking) with a generator seeded by a
constant (not the run's seed). So every evaluation of a run, every run on the same corpus (whatever masking
rate or schedule it trained with), and any saved model (ours, or a Hugging Face MLM with the same tokenizer)
are measured on exactly the same positions and replacements, and their numbers compare directly.

loss = mean cross-entropy over the masked positions; accuracy = share of them whose top-1 prediction is
the original token (both over every masked position of the subset, not a mean of batch means).

bits per character = loss (nats per masked token) x T / C / ln 2, where C is the number of characters of the
corpus's held-out documents as read (before normalization) and T their tokens without the [SEP]s, both
counted at prepare time (`validation_characters`, `validation_text_tokens` in the manifest). A loss per token
depends on how much text a token holds, which the vocabulary and normalization decide; per character of the
same text it does not, so runs with different tokenizers or languages compare on it. It is an estimate:
masked-token loss over the subset stands for every token's, and the model sees 75% of the context (as MLM
pseudo-likelihoods do), not a left-to-right code length. Corpora prepared before the count have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import math

import torch
import torch.nn.functional as F
from torch import nn

from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.runtime import autocast
from crammer.train.config import MaskingConfig
from crammer.train.masking import MaskedBatch, MLMCollator

MASK_SEED = 20221228  # the validation masks' own seed: the same for every run on a corpus
VALIDATION_MASKING = MaskingConfig()  # the validation masks' recipe: the same for every run on a corpus


@dataclass(frozen=True)
class ValidationResult:
    loss: float
    accuracy: float
    sequences: int
    masked_tokens: int
    bits_per_char: float | None = None  # None: the corpus has no character count (prepared before it)


def tokens_per_character(corpus: PackedCorpus) -> float | None:
    """Tokens (without [SEP]) per character of the corpus's held-out text; None when not counted."""
    m = corpus.manifest
    if not m.validation_characters or not m.validation_text_tokens:
        return None
    return m.validation_text_tokens / m.validation_characters


def validation_batches(corpus: PackedCorpus, masking: MaskingConfig, sequences: int,
                       batch_size: int) -> list[MaskedBatch]:
    """The fixed masked subset of `corpus`'s validation split: its first `sequences` blocks (all of them if it
    has fewer) in batches of `batch_size`. Raises if the corpus has no validation split."""
    held_out = corpus.validation()
    if not len(held_out):
        raise CrammerError(f"{corpus.path}: no validation split (prepared before it existed, or with "
                           "--validation-sequences 0); prepare the corpus again to validate on it")
    rows = min(sequences, len(held_out))
    collator = MLMCollator(masking, corpus.vocab_size, corpus.special_tokens)
    tokens = torch.from_numpy(held_out.get_batch(torch.arange(rows).numpy()))
    masked = collator(tokens, torch.Generator().manual_seed(MASK_SEED))  # one draw for the subset: fixed
    return [_rows(masked, start, min(start + batch_size, rows)) for start in range(0, rows, batch_size)]


def _rows(batch: MaskedBatch, start: int, stop: int) -> MaskedBatch:
    cut = lambda t: None if t is None else t[start:stop].contiguous()  # noqa: E731
    return MaskedBatch(cut(batch.input_ids), cut(batch.labels), cut(batch.masked_positions),
                       cut(batch.attention_mask))


def _accepts_masked_positions(model: nn.Module) -> bool:
    """Our MLM predicts only the masked positions (sparse); other Hugging Face MLMs score every position."""
    import inspect

    return "masked_positions" in inspect.signature(model.forward).parameters


class Validator:
    """Evaluates a model on fixed masked batches (kept on the device). Under DDP pass `rank`/`world_size`:
    each rank takes every world_size-th batch and the sums are all-reduced, so all ranks get the same result."""

    def __init__(self, batches: list[MaskedBatch], device: torch.device, precision: str, rank: int = 0,
                 world_size: int = 1, tokens_per_char: float | None = None):
        self.device, self.precision, self.world_size = device, precision, world_size
        self.tokens_per_char = tokens_per_char  # of the held-out text: turns the loss into bits per character
        self.sequences = sum(len(b.input_ids) for b in batches)
        self.batches_per_rank = -(-len(batches) // world_size)  # the same number on every rank
        self.batches = [b.to(device) for b in batches[rank::world_size]]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> ValidationResult:
        was_training = model.training
        model.eval()
        sparse = _accepts_masked_positions(model)
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, correct, count
        try:
            for batch in self.batches:
                labels = batch.labels.gather(1, batch.masked_positions)  # (B, M); -100 = not a prediction
                with autocast(self.precision, self.device):
                    if sparse:
                        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       masked_positions=batch.masked_positions).logits
                    else:
                        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                        index = batch.masked_positions[..., None].expand(-1, -1, logits.shape[-1])
                        logits = logits.gather(1, index)
                logits = logits.float()
                valid = labels != -100
                sums[0] += F.cross_entropy(logits[valid], labels[valid], reduction="sum").double()
                sums[1] += (logits.argmax(-1) == labels)[valid].sum()
                sums[2] += valid.sum()
            if self.world_size > 1:
                torch.distributed.all_reduce(sums)
        finally:
            model.train(was_training)
        loss_sum, correct, count = sums.tolist()
        if not count:
            raise CrammerError("validation: the subset has no masked ordinary tokens")
        loss = loss_sum / count
        bits_per_char = None if self.tokens_per_char is None else loss * self.tokens_per_char / math.log(2)
        return ValidationResult(loss, correct / count, self.sequences, int(count), bits_per_char)


def run_sequences(model_dir: Path) -> int:
    """The validation subset size of the run that made `model_dir` (final/ or a checkpoint of a `cram pretrain`
    folder), so that its numbers are measured as that run measured them; the default for any other model. (The
    masks are `VALIDATION_MASKING` for every model.)"""
    from crammer.io import read_json
    from crammer.runfiles import CONFIG_FILE, SUMMARY_FILE
    from crammer.train.config import EvalConfig

    for candidate, key in ((model_dir / SUMMARY_FILE, "config"), (model_dir.parent.parent / CONFIG_FILE, None)):
        if candidate.is_file():
            saved = read_json(candidate)
            saved = saved.get(key, {}) if key else saved
            return int(saved.get("eval", {}).get("sequences", EvalConfig().sequences))
    return EvalConfig().sequences


def tokenizer_difference(a: Path, b: Path) -> str | None:
    """The first part that tells two `tokenizer.json` files apart in the ids they give a text (the vocabulary,
    the special tokens, the normalizer, the pre-tokenizer, the model's other settings), or None. Truncation,
    padding and the post-processor do not change them: `cram data prepare --tokenizer` switches off the first
    two of a model's own tokenizer, and its file's bytes then differ from the model's."""
    from crammer.io import read_json

    def parts(path: Path) -> dict:
        data = read_json(path)
        if not isinstance(data, dict):
            raise CrammerError(f"{path}: not a tokenizer (a JSON object expected)")
        model = dict(data.get("model") or {})
        specials = sorted((t.get("id"), t.get("content"), t.get("special")) for t in data.get("added_tokens") or [])
        return {"the vocabulary": model.pop("vocab", None), "the special tokens": specials,
                "the normalizer": data.get("normalizer"), "the pre-tokenizer": data.get("pre_tokenizer"),
                "the tokenizer model's settings": model}

    ours, theirs = parts(a), parts(b)
    return next((name for name in ours if ours[name] != theirs[name]), None)


def validate_model(model: str | Path, data: str | Path, sequences: int | None = None, batch_size: int = 32,
                   device: str = "auto", precision: str = "auto") -> ValidationResult:
    """Validation loss and accuracy of a saved MLM folder (ours, or a Hugging Face one with the corpus's
    tokenizer) on a prepared corpus's validation split: the measurement pretraining logs."""
    from crammer.runtime import resolve_device, resolve_precision

    model_dir = Path(model).expanduser()
    corpus = PackedCorpus(data)
    if not (model_dir / "config.json").is_file():
        raise CrammerError(f"{model_dir}: not a model folder (no config.json); a checkpoint written before "
                           "checkpoints were models has none: use RUN_DIR/final or a newer checkpoint")
    tokenizer = model_dir / "tokenizer.json"
    if tokenizer.is_file():
        differ = tokenizer_difference(tokenizer, corpus.path / "tokenizer.json")
        if differ:
            raise CrammerError(f"{model_dir}: its tokenizer is not the one of {corpus.path} ({differ} differs); "
                               "validation numbers compare only on the tokenizer the model was trained with")
    torch_device = resolve_device(device, "--device")
    resolved = resolve_precision(precision, torch_device, fp16=False)
    import crammer.model  # noqa: F401  (registers crammed_bert with the Auto classes)
    from transformers import AutoModelForMaskedLM

    try:
        mlm = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32).to(torch_device)
    except Exception as e:  # a folder transformers cannot load: one line
        raise CrammerError(f"{model_dir}: cannot load it as a masked LM ({type(e).__name__})") from None
    if mlm.config.vocab_size != corpus.vocab_size:
        raise CrammerError(f"{model_dir}: vocabulary of {mlm.config.vocab_size} tokens, the corpus has "
                           f"{corpus.vocab_size}: not the same tokenizer")
    batches = validation_batches(corpus, VALIDATION_MASKING, sequences or run_sequences(model_dir), batch_size)
    return Validator(batches, torch_device, resolved, tokens_per_char=tokens_per_character(corpus))(mlm)
