"""The validation split: whole documents held out of training, packed like the training blocks.

Which documents are held out is decided after the packing pass, when the corpus's size is known: each
document gets a pseudo-random number from its index and the seed, and the documents with the smallest
numbers are taken until they fill the wanted number of blocks. So the choice is a uniform sample over the
whole corpus (every source, beginning to end), the same for the same corpus and seed, and exact in size
up to one document. The staged token stream is then split by document into a training and a validation
stream: a held-out document never has a piece in a training block. Everything streams through numpy
arrays of bounded size, the document lengths included (they are kept on disk, not in memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from crammer.errors import CrammerError

AUTO_SHARE = 0.005  # of the sequences, when no size is asked for
AUTO_MIN = 256  # ... but at least this many where the corpus allows (at most AUTO_MIN_SHARE of it)
AUTO_MIN_SHARE = 0.05
AUTO_MAX = 16384  # enough for a loss to 3 decimals; more only costs evaluation time
DOCS_PER_PASS = 1 << 20  # document lengths handled per numpy step


def validation_target(requested: int | None, total_sequences: int) -> int:
    """Blocks to hold out: `requested`, or (None) about 0.5% of the corpus, at least a few hundred where the
    corpus allows, at most AUTO_MAX. 0 turns the split off."""
    if requested is None:
        wanted = max(round(AUTO_SHARE * total_sequences), min(AUTO_MIN, int(AUTO_MIN_SHARE * total_sequences)))
        return min(wanted, AUTO_MAX)
    if requested > total_sequences // 2:
        raise CrammerError(f"data.validation_sequences={requested} is more than half of the corpus's "
                           f"{total_sequences} sequences; ask for fewer, or 0 for no validation split")
    return requested


class DocumentLengths:
    """Token counts of the staged documents (their [SEP] included), appended to a file as they are staged."""

    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO | None = open(path, "wb")
        self.count = 0

    def add(self, lengths: np.ndarray) -> None:
        lengths.astype(np.int64, copy=False).tofile(self._file)
        self.count += len(lengths)

    def close(self) -> np.ndarray:
        """All lengths, memory-mapped (reading them costs no memory to speak of)."""
        self._file.close()
        if not self.count:
            return np.zeros(0, dtype=np.int64)
        return np.memmap(self.path, dtype=np.int64, mode="r", shape=(self.count,))


def _uniform(first: int, count: int, seed: int) -> np.ndarray:
    """A pseudo-random number in [0, 1) for documents first..first+count-1 (splitmix64 of index and seed)."""
    with np.errstate(over="ignore"):
        state = np.arange(first + 1, first + count + 1, dtype=np.uint64) + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
        x = state * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _passes(lengths: np.ndarray, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for first in range(0, len(lengths), DOCS_PER_PASS):
        part = np.asarray(lengths[first:first + DOCS_PER_PASS])
        yield part, _uniform(first, len(part), seed)


def held_out_threshold(lengths: np.ndarray, target_tokens: int, seed: int) -> float:
    """The smallest t such that the documents numbered below t hold at least `target_tokens` tokens."""
    low, high = 0.0, 1.0
    for _ in range(48):  # 2^-48: finer than any corpus's documents are apart
        mid = (low + high) / 2
        tokens = sum(int(part[u < mid].sum()) for part, u in _passes(lengths, seed))
        if tokens >= target_tokens:
            high = mid
        else:
            low = mid
    return high


class _TokenReader:
    """The staged blocks read back as one flat token stream, a bounded slice at a time."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self._blocks = blocks
        self._current = np.zeros(0, dtype=np.int64)
        self._at = 0

    def read(self, n: int) -> np.ndarray:
        pieces = []
        while n > 0:
            if self._at == len(self._current):
                block = next(self._blocks, None)
                if block is None:  # the staged stream ends with whole blocks: the last tokens were dropped
                    break
                self._current, self._at = block.reshape(-1), 0
            take = min(n, len(self._current) - self._at)
            pieces.append(self._current[self._at:self._at + take])
            self._at += take
            n -= take
        return np.concatenate(pieces) if pieces else self._current[:0]


def held_out_sum(values: np.ndarray, threshold: float, seed: int) -> int:
    """The sum of `values` (one per staged document, e.g. its characters) over the documents held out."""
    return sum(int(part[u < threshold].sum()) for part, u in _passes(values, seed))


def split_documents(blocks: Iterator[np.ndarray], lengths: np.ndarray, threshold: float, seed: int, train,
                    validation, max_tokens: int) -> int:
    """Send each staged document to `validation` (numbered below `threshold`) or `train` (BlockWriters), in
    corpus order; return how many documents were held out. At most `max_tokens` are read at once."""
    reader = _TokenReader(blocks)
    held_out = 0
    for part, u in _passes(lengths, seed):
        is_validation = u < threshold
        held_out += int(is_validation.sum())
        # runs of consecutive documents that go the same way: their first documents and token counts
        edges = np.flatnonzero(np.diff(is_validation.astype(np.int8))) + 1
        starts = np.concatenate([[0], edges]).astype(np.int64)
        sums = np.add.reduceat(part, starts)
        for start, tokens in zip(starts, sums):
            writer = validation if is_validation[start] else train
            while tokens > 0:
                piece = reader.read(int(min(tokens, max_tokens)))
                if not len(piece):
                    return held_out
                writer.add(piece)
                tokens -= len(piece)
    return held_out
