"""Reading a prepared corpus (see `crammer.data.manifest` for its layout): the token blocks, memory-mapped.

Sequences are addressed by a global index across shards, in stored order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from crammer.data.manifest import Manifest
from crammer.errors import CrammerError


VERIFY_ROWS = 1 << 16  # sequences read at a time by `verify_token_ids`: memory flat in shard size


def verify_token_ids(path: str | Path) -> tuple[int, int]:
    """Read every token of every shard (training and validation) and check it is an id of the corpus's
    vocabulary: a damaged shard, or one written with another tokenizer, would otherwise index past the model's
    embedding table. (token count, shard count); a CrammerError names the first id out of range, its shard,
    sequence and position."""
    tokens = shards = 0
    for split in ("train", "validation"):
        corpus = PackedCorpus(path, split)  # type: ignore[arg-type]
        entries = corpus.manifest.shards if split == "train" else corpus.manifest.validation_shards
        for entry, array in zip(entries, corpus._shards):
            for start in range(0, len(array), VERIFY_ROWS):
                block = np.asarray(array[start:start + VERIFY_ROWS])
                if block.size and (block.max() >= corpus.vocab_size or block.min() < 0):
                    row, column = (int(i) for i in np.argwhere((block >= corpus.vocab_size) | (block < 0))[0])
                    raise CrammerError(f"{corpus.path / entry.file}: token id {block[row, column]} at sequence "
                                       f"{start + row}, position {column} is not in the vocabulary (ids 0-"
                                       f"{corpus.vocab_size - 1}): a damaged shard, or one of another tokenizer")
                tokens += block.size
            shards += 1
    return tokens, shards


class PackedCorpus:
    """Memory-mapped view of the token blocks of a prepared corpus: its training blocks, or with
    `split="validation"` the blocks of its held-out documents (none in corpora prepared before the split)."""

    def __init__(self, path: str | Path, split: Literal["train", "validation"] = "train"):
        self.path = Path(path)
        self.split = split
        self.manifest = Manifest.read(self.path)
        self.seq_len: int = int(self.manifest.seq_len)
        self.vocab_size: int = int(self.manifest.vocab_size)
        self.special_tokens: dict[str, int] = dict(self.manifest.special_tokens)
        self._shards: list[np.ndarray] = []
        offsets = [0]
        for entry in self.manifest.shards if split == "train" else self.manifest.validation_shards:
            shard_path = self.path / entry.file
            try:
                arr = np.load(shard_path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CrammerError(f"{shard_path}: cannot read shard ({e})") from None
            if arr.ndim != 2 or arr.shape[1] != self.seq_len or arr.shape[0] != entry.num_sequences:
                raise CrammerError(
                    f"{shard_path}: shape {arr.shape} does not match the manifest "
                    f"({entry.num_sequences}, {self.seq_len})"
                )
            self._shards.append(arr)
            offsets.append(offsets[-1] + arr.shape[0])
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return np.asarray(self._shards[shard][index - self._offsets[shard]])

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        """Gather sequences by global index into one (len(indices), seq_len) int64 array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        shard_ids = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_ids):
            sel = shard_ids == shard
            out[sel] = self._shards[shard][indices[sel] - self._offsets[shard]]
        return out

    @property
    def has_validation(self) -> bool:
        return bool(self.manifest.validation_shards)

    def validation(self) -> PackedCorpus:
        """The validation split of the same corpus (empty for corpora prepared before it existed)."""
        return PackedCorpus(self.path, split="validation")

    def tokenizer(self):
        """The corpus's tokenizer as a `transformers` fast tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))
