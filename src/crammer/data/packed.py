"""Reading a prepared corpus: the on-disk contract between `cram data prepare` and training.

A prepared corpus is a folder with
- `manifest.json`: format, seq_len, dtype, vocab_size, special token ids, shard list, counts, the
  resolved config and its hash;
- `shards/shard-NNNNN.npy`: 2-D arrays (num_sequences, seq_len) of token ids, memory-mapped here;
- the tokenizer (`tokenizer.json` + what `AutoTokenizer.from_pretrained(DIR)` needs).

Sequences are addressed by a global index across shards, in stored order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from crammer.errors import CrammerError
from crammer.io import read_json

FORMAT_FAMILY = "crammer-packed-"  # the tag of every version of the format
FORMAT = FORMAT_FAMILY + "v1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def is_prepared_corpus(path: Path) -> bool:
    """Whether `path` holds a corpus written by `cram data prepare` (any format version): such a folder may be
    replaced by a new one, and is never read as input."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(FORMAT_FAMILY)


class PackedCorpus:
    """Memory-mapped view of the token blocks of a prepared corpus."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CrammerError(
                f"{self.path}: not a prepared corpus (no {MANIFEST}); run `cram data prepare` first"
            )
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if self.manifest.get("format") != FORMAT:
            raise CrammerError(f"{manifest_path}: unknown format {self.manifest.get('format')!r}")
        self.seq_len: int = int(self.manifest["seq_len"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.special_tokens: dict[str, int] = dict(self.manifest["special_tokens"])
        self._shards: list[np.ndarray] = []
        offsets = [0]
        for entry in self.manifest["shards"]:
            shard_path = self.path / entry["file"]
            try:
                arr = np.load(shard_path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CrammerError(f"{shard_path}: cannot read shard ({e})") from None
            if arr.ndim != 2 or arr.shape[1] != self.seq_len or arr.shape[0] != entry["num_sequences"]:
                raise CrammerError(
                    f"{shard_path}: shape {arr.shape} does not match the manifest "
                    f"({entry['num_sequences']}, {self.seq_len})"
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

    def tokenizer(self):
        """The corpus's tokenizer as a `transformers` fast tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))
