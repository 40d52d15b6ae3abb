"""Token stream -> `seq_len` blocks in shard files, then reordered.

The stream is cut into blocks written to staging shards as they fill; the blocks are then reordered
(random / easy-first / sentence-length / none = corpus order) shard by shard from the memory-mapped
staging shards into the final `shards/`. Only an int per block is held in memory, so memory stays
flat in corpus size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from crammer.data.config import Order
from crammer.data.manifest import Shard

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SENTENCE_ENDS = (".", "!", "?")


def shard_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type holding every token id: uint16 for the usual vocabularies."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def sentence_end_ids(tok: Tokenizer) -> list[int]:
    return [i for i in (tok.token_to_id(t) for t in SENTENCE_ENDS) if i is not None]


class BlockWriter:
    """Cuts a token stream into `seq_len` blocks and writes full shards as they fill."""

    def __init__(self, folder: Path, seq_len: int, shard_sequences: int, dtype: np.dtype):
        self.folder, self.seq_len, self.shard_sequences, self.dtype = folder, seq_len, shard_sequences, dtype
        self.shard_tokens = shard_sequences * seq_len
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[Shard] = []  # file names relative to the folder's parent (the corpus folder)
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, tokens: np.ndarray) -> None:
        self.buffer.append(tokens)
        self.buffered += len(tokens)
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n_tokens: int) -> None:
        stream = np.concatenate(self.buffer)
        self.write(stream[:n_tokens].reshape(-1, self.seq_len))
        rest = stream[n_tokens:]
        self.buffer, self.buffered = [rest], len(rest)

    def write(self, blocks: np.ndarray) -> None:
        name = f"shard-{len(self.shards):05d}.npy"
        np.save(self.folder / name, blocks.astype(self.dtype, copy=False))
        self.shards.append(Shard(f"{self.folder.name}/{name}", int(len(blocks))))

    def close(self) -> int:
        """Write the last whole blocks; return how many remainder tokens were dropped."""
        full = (self.buffered // self.seq_len) * self.seq_len
        if full:
            self._flush(full)
        dropped, self.buffer, self.buffered = self.buffered, [], 0
        return dropped

    @property
    def num_sequences(self) -> int:
        return sum(s.num_sequences for s in self.shards)

    def path(self, shard: Shard) -> Path:
        return self.folder.parent / shard.file

    def blocks(self) -> Iterator[np.ndarray]:
        """The written blocks shard by shard, each shard memory-mapped only while it is used."""
        for shard in self.shards:
            arr = np.load(self.path(shard), mmap_mode="r")
            yield np.asarray(arr)
            del arr

    def remove(self) -> None:
        for shard in self.shards:
            self.path(shard).unlink()
        self.folder.rmdir()


def sequence_order(order: Order, staged: BlockWriter, vocab_size: int, sentence_end_ids: list[int],
                   seed: int) -> np.ndarray:
    """The permutation of staged blocks for the chosen ordering (stable, so ties keep corpus order)."""
    n = staged.num_sequences
    if order == "none":
        return np.arange(n)
    if order == "random":
        return np.random.default_rng(seed).permutation(n)
    if order == "easy-first":
        freq = np.zeros(vocab_size, dtype=np.int64)
        for blocks in staged.blocks():
            freq += np.bincount(blocks.ravel(), minlength=vocab_size)[:vocab_size]
        keys = np.concatenate([freq[blocks].mean(axis=1) for blocks in staged.blocks()])
        return np.argsort(-keys, kind="stable")  # common tokens first
    ends = np.asarray(sentence_end_ids, dtype=np.int64)
    counts = np.concatenate([np.isin(blocks, ends).sum(axis=1) for blocks in staged.blocks()])
    return np.argsort(-counts, kind="stable")  # more sentence ends per block = shorter sentences first


def write_ordered(staged: BlockWriter, perm: np.ndarray, out: BlockWriter) -> None:
    """Gather blocks in `perm` order from the staging shards, one output shard at a time.

    Each staging shard is mapped only while it is read, so resident memory stays one shard or so.
    """
    offsets = np.concatenate([[0], np.cumsum([s.num_sequences for s in staged.shards])])
    for start in range(0, len(perm), out.shard_sequences):
        wanted = perm[start : start + out.shard_sequences]
        gathered = np.empty((len(wanted), out.seq_len), dtype=out.dtype)
        source = np.searchsorted(offsets, wanted, side="right") - 1
        for s in np.unique(source):
            sel = source == s
            arr = np.load(staged.path(staged.shards[s]), mmap_mode="r")
            gathered[sel] = arr[wanted[sel] - offsets[s]]
            del arr
        out.write(gathered)
