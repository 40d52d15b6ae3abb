"""Masked-LM corruption with a fixed number of masked positions per row.

A fixed count M = round(fraction * seq_len) keeps every tensor shape static (no `nonzero`), which is
what lets `torch.compile` build one graph and lets the model predict only those M positions. A masking
schedule (`masking.schedule=linear`, e.g. 40% down to 15%) changes M between micro-batches, in steps of
seq_len/16 positions, so a compiled model sees a handful of shapes over a run, not one per step.

Special tokens ([PAD], [CLS], [SEP], [UNK], [MASK]) are never chosen while a row has enough ordinary
tokens: predicting a document boundary or padding teaches nothing. A row with fewer ordinary tokens
than M (heavy padding) fills its remaining slots with special positions whose label is -100, so they
are neither corrupted nor counted in the loss. Random replacements are drawn from ordinary tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crammer.train.config import MaskingConfig


@dataclass
class MaskedBatch:
    """One micro-batch ready for `CrammedBertForMaskedLM.forward`."""

    input_ids: torch.Tensor  # (B, S) int64, corrupted
    labels: torch.Tensor  # (B, S) int64, original ids at masked positions, -100 elsewhere
    masked_positions: torch.Tensor  # (B, M) int64
    attention_mask: torch.Tensor | None  # (B, S) int64, only when the batch holds padding

    def to(self, device: torch.device, non_blocking: bool = False) -> "MaskedBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return MaskedBatch(move(self.input_ids), move(self.labels), move(self.masked_positions), move(self.attention_mask))

    def pin_memory(self) -> "MaskedBatch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return MaskedBatch(pin(self.input_ids), pin(self.labels), pin(self.masked_positions), pin(self.attention_mask))


def num_masked(seq_len: int, fraction: float, bucket: int = 1) -> int:
    """Masked positions per row: `fraction` of the row, rounded to a multiple of `bucket`."""
    return max(1, bucket * round(fraction * seq_len / bucket), min(bucket, seq_len))


class MaskingSchedule:
    """The masking fraction of global micro-batch k: `masking.fraction` throughout (constant), or decreasing
    linearly to `masking.final_fraction` over the budget (Ankner et al. 2023: 30% -> 15% beats any constant).

    With a token budget, batch k's progress is exact (k global micro-batches of `tokens_per_batch` tokens), so a
    resumed run masks exactly as the uninterrupted one did; with a wall-clock budget it is the progress the loop
    last reported (`observe`), a few prefetched micro-batches behind.
    """

    def __init__(self, cfg: MaskingConfig, tokens_per_batch: int = 0, budget_tokens: int | None = None):
        self.cfg, self.tokens_per_batch, self.budget_tokens = cfg, tokens_per_batch, budget_tokens
        self.progress = 0.0

    def observe(self, progress: float) -> None:
        self.progress = progress

    def __call__(self, k: int) -> float:
        if self.cfg.schedule == "constant":
            return self.cfg.fraction
        progress = k * self.tokens_per_batch / self.budget_tokens if self.budget_tokens else self.progress
        progress = min(max(progress, 0.0), 1.0)
        return self.cfg.fraction + (self.cfg.final_fraction - self.cfg.fraction) * progress

    @property
    def mean_fraction(self) -> float:
        """Over the whole run: what FLOPs per token are counted with."""
        if self.cfg.schedule == "constant":
            return self.cfg.fraction
        return (self.cfg.fraction + self.cfg.final_fraction) / 2


class MLMCollator:
    """Turns token blocks into masked batches; the randomness comes from the caller's generator."""

    def __init__(self, cfg: MaskingConfig, vocab_size: int, special_tokens: dict[str, int]):
        self.cfg = cfg
        self.mask_id = int(special_tokens["mask"])
        self.pad_id = int(special_tokens["pad"])
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.tensor(sorted(set(special_tokens.values())))] = True
        self.is_special = special
        self.ordinary_ids = torch.nonzero(~special).squeeze(1)

    def random_batch(self, rows: int, seq_len: int, generator: torch.Generator) -> MaskedBatch:
        """A masked batch of random ordinary tokens: what sizing and benchmarks run when the data is not
        what is measured."""
        tokens = self.ordinary_ids[torch.randint(len(self.ordinary_ids), (rows, seq_len), generator=generator)]
        return self(tokens, generator)

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator, first_row: int = 0,
                 batch_rows: int | None = None, fraction: float | None = None) -> MaskedBatch:
        """Mask `tokens`, rows [first_row, first_row + len(tokens)) of a batch of `batch_rows` rows (default:
        the whole batch). The random numbers are drawn for the whole batch and sliced, so a DDP rank masks
        its share exactly as one process masks the whole, without reading or masking the other shares.
        `fraction` (from a `MaskingSchedule`) replaces the config's, rounded to the schedule's buckets."""
        tokens = tokens.long()
        batch, seq_len = tokens.shape
        batch_rows = batch if batch_rows is None else batch_rows
        share = slice(first_row, first_row + batch)
        if fraction is None or self.cfg.schedule == "constant":
            m = num_masked(seq_len, self.cfg.fraction if fraction is None else fraction)
        else:
            m = num_masked(seq_len, fraction, bucket=max(1, seq_len // 16))
        special = self.is_special[tokens]
        # Random scores; special positions get a score above every ordinary one, so they are picked last.
        scores = torch.rand(batch_rows, seq_len, generator=generator)[share] + special.float()
        positions = scores.topk(m, dim=1, largest=False).indices.sort(dim=1).values
        chosen_ordinary = ~special.gather(1, positions)

        labels = torch.full_like(tokens, -100)
        labels.scatter_(1, positions, torch.where(chosen_ordinary, tokens.gather(1, positions), -100))

        action = torch.rand(batch_rows, m, generator=generator)[share]
        to_mask = chosen_ordinary & (action < self.cfg.replace_mask)
        to_random = chosen_ordinary & (action >= self.cfg.replace_mask) & (
            action < self.cfg.replace_mask + self.cfg.replace_random
        )
        random_ids = self.ordinary_ids[torch.randint(len(self.ordinary_ids), (batch_rows, m), generator=generator)[share]]
        current = tokens.gather(1, positions)
        new = torch.where(to_mask, self.mask_id, torch.where(to_random, random_ids, current))
        input_ids = tokens.clone().scatter_(1, positions, new)

        padding = tokens == self.pad_id
        attention_mask = (~padding).long() if bool(padding.any()) else None
        return MaskedBatch(input_ids, labels, positions, attention_mask)
