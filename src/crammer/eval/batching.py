"""Tokenized splits as flat arrays, length-bucketed batches and their padding.

A split is tokenized once (one batched call of the fast tokenizer) into one flat id array with each example's
start and length, so that building a batch is a few numpy index operations instead of a `torch.tensor` per
row; batches are bucketed by length and padded only to their longest example (rounded up to a multiple of
`pad_multiple`), so short sentences do not pay for 128-token padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from crammer.eval.spec import TaskSpec
from crammer.eval.tasks import Split

IGNORE = -100  # the label of positions the loss skips (Hugging Face's convention): padding, specials, word pieces


@dataclass
class Encoded:
    """A tokenized split. `labels` holds one entry per example (class index, float target, or a 0/1 row per
    label for multi-label), or, for token classification, one per token of `ids` (the tag on each word's
    first piece, IGNORE elsewhere); `targets` are the labels as scored (per word for token classification)."""

    ids: np.ndarray  # int64, all examples' token ids end to end
    types: np.ndarray | None  # segment ids aligned with `ids`, where the model takes them
    starts: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int64 [N]
    labels: np.ndarray
    targets: list
    per_token: bool = False  # labels aligned with `ids` (token classification)

    @classmethod
    def of(cls, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None,
           labels: Sequence, targets: list | None = None) -> Encoded:
        """From per-example lists (what a tokenizer returns)."""
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = lambda rows: np.fromiter((t for row in rows for t in row), dtype=np.int64,  # noqa: E731
                                        count=int(lengths.sum()))
        per_token = len(labels) > 0 and isinstance(labels[0], (list, tuple)) and not isinstance(labels, np.ndarray)
        label_array = flat(labels) if per_token else np.asarray(labels)
        if label_array.dtype.kind == "f":
            label_array = label_array.astype(np.float32)
        return cls(flat(input_ids), flat(token_type_ids) if token_type_ids is not None else None, starts, lengths,
                   label_array, list(labels) if targets is None else targets, per_token)

    def __len__(self) -> int:
        return len(self.lengths)

    def input_ids(self, i: int) -> list[int]:
        return self.ids[self.starts[i]:self.starts[i] + self.lengths[i]].tolist()


def encode(tokenizer, split: Split, max_length: int, spec: TaskSpec | None = None) -> Encoded:
    """Tokenize a split (pairs as `[CLS] a [SEP] b [SEP]`), truncated to `max_length` tokens."""
    if spec is not None and spec.is_token_level:
        return _encode_words(tokenizer, split, max_length)
    enc = tokenizer(split.text_a, split.text_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    if spec is None or spec.kind != "multi-label":
        return Encoded.of(enc["input_ids"], types, split.labels)
    hot = np.zeros((len(split), spec.num_labels), dtype=np.float32)  # one 0/1 column per label (BCE targets)
    for row, classes in enumerate(split.labels):
        hot[row, list(classes)] = 1.0
    return Encoded.of(enc["input_ids"], types, hot, targets=hot.tolist())


def _encode_words(tokenizer, split: Split, max_length: int) -> Encoded:
    """Word-piece alignment: the first piece of each word carries its tag; later pieces and the special
    tokens are IGNORE. Words cut off by truncation have no prediction (see `finetune.predict`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token classification needs a fast tokenizer (word ids)")
    enc = tokenizer(split.text_a, is_split_into_words=True, truncation=True, max_length=max_length)
    aligned = []
    for row, tags in enumerate(split.labels):
        previous = None
        out = []
        for word in enc.word_ids(row):
            out.append(IGNORE if word is None or word == previous else tags[word])
            previous = word
        aligned.append(out)
    types = enc.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded.of(enc["input_ids"], types, aligned, targets=[list(t) for t in split.labels])


def bucketed_batches(lengths: Sequence[int], batch_size: int, window: int,
                     generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length examples.

    A random order is cut into windows of `window` batches; each window is sorted by length and split
    into batches, and the batches are shuffled, so every epoch sees new batch compositions but a batch
    rarely mixes a 10-token and a 120-token example.
    """
    lengths = np.asarray(lengths)
    order = torch.randperm(len(lengths), generator=generator).numpy()
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")].tolist()
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def collate(data: Encoded, indices: Sequence[int], pad_id: int, pad_multiple: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example, rounded up to a multiple of `pad_multiple` (numpy gathers, no
    per-row Python). Label dtypes follow the data: long for classes and tags, float for targets."""
    rows = np.asarray(indices, dtype=np.int64)
    lengths = data.lengths[rows]
    width = math.ceil(int(lengths.max()) / pad_multiple) * pad_multiple
    positions = np.arange(width)
    mask = positions[None, :] < lengths[:, None]
    source = data.starts[rows, None] + np.minimum(positions[None, :], lengths[:, None] - 1)
    batch = {"input_ids": torch.from_numpy(np.where(mask, data.ids[source], pad_id)),
             "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if data.types is not None:
        batch["token_type_ids"] = torch.from_numpy(np.where(mask, data.types[source], 0))
    if data.per_token:
        batch["labels"] = torch.from_numpy(np.where(mask, data.labels[source], IGNORE))
    else:
        labels = data.labels[rows]
        batch["labels"] = torch.from_numpy(labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64))
    return batch
