"""What decides a prepared corpus: `CorpusConfig`, its named presets and the checks every config passes.

A config is checked when it is built (a preset, a flag, a `key=value` override), so a bad value fails at
once, before any output folder is touched or any document read. Its `recipe_hash()` is the cache key
of a prepared corpus: a change to it would make every earlier corpus look stale.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from crammer.config import check_literals, config_hash, to_dict
from crammer.errors import CrammerError

Order = Literal["random", "easy-first", "sentence-length", "none"]  # none: corpus order
ORDERS = typing.get_args(Order)
Normalization = Literal["auto", "uncased", "cased"]  # auto: from the corpus's scripts (crammer.data.language)
NORMALIZATIONS = typing.get_args(Normalization)


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the prepared corpus (`out` and `workers` do not change its bytes)."""

    sources: tuple[str, ...] = ("pydoc",)
    out: str = "data"
    vocab_size: int = 32768
    seq_len: int = 128
    filter_ratio: float | None = None  # the paper's rule: keep if n_tokens < ratio * n_chars; 0: no filter;
    # None: 0.3 for English-like text, else the corpus rule (crammer.data.language)
    filter_margin: float = 1.2  # the corpus rule: tokens allowed per character = margin x the corpus's median
    filter_margin_unspaced: float = 1.5  # ... for characters of scripts written without spaces (never junk's)
    order: Order = "random"
    dedup: bool = False
    max_docs: int | None = None  # cap on documents read over all sources
    seed: int = 0
    tokenizer: str | None = None  # reuse this tokenizer instead of training one
    tokenizer_docs: int | None = None  # train the tokenizer on the first N documents only (None: all)
    text_field: str = "text"
    normalization: Normalization = "auto"  # of a trained tokenizer (a given one keeps its own)
    ascii_only: bool = False
    skip_bad: bool = False  # skip and count bad records instead of failing
    validation_sequences: int | None = None  # held-out blocks of whole documents; None = ~0.5%, 0 = none
    shard_sequences: int = 65536  # blocks per shard file
    workers: int | None = None  # tokenizer threads; None = one per CPU

    # Keys of earlier versions, now one setting: a script that still sets them is told which.
    FIXED_KEYS = {key: "case and accents are one setting now: normalization=uncased|cased "
                       "(auto: uncased for English, cased NFC otherwise)" for key in ("lowercase", "strip_accents")}

    def __post_init__(self) -> None:
        if not self.sources:
            raise CrammerError("data: no --source given")
        targets = [source.partition("::")[0].strip() for source in self.sources]
        for i, target in enumerate(targets):
            if target in targets[:i]:
                raise CrammerError(f"--source {target} given twice: its documents would be read twice (and a "
                                   "held-out one trained on); give each source once (cap it with ::max_docs=N)")
        for name, low in (("vocab_size", 16), ("seq_len", 2), ("shard_sequences", 1), ("workers", 1),
                          ("tokenizer_docs", 1)):
            value = getattr(self, name)
            if value is not None and value < low:  # None: the default (one per CPU, all documents)
                raise CrammerError(f"data.{name}: must be >= {low}, got {value}")
        if self.filter_ratio is not None and self.filter_ratio < 0:
            raise CrammerError(f"data.filter_ratio: must be >= 0 (0: no filter; none: automatic), got {self.filter_ratio}")
        for name in ("filter_margin", "filter_margin_unspaced"):
            if getattr(self, name) <= 0:
                raise CrammerError(f"data.{name}: must be > 0, got {getattr(self, name)}")
        if self.tokenizer and self.normalization != "auto":
            raise CrammerError(f"data.normalization={self.normalization}: a given --tokenizer keeps its own "
                               "normalization; leave normalization at auto")
        if self.validation_sequences is not None and self.validation_sequences < 0:
            raise CrammerError(f"data.validation_sequences: must be >= 0 (0: no validation split), "
                               f"got {self.validation_sequences}")
        if self.max_docs is not None and self.max_docs <= 0:
            raise CrammerError(f"data.max_docs: must be positive, got {self.max_docs}")
        check_literals(self, "data.")

    def recipe_hash(self) -> str:
        """Hash of the fields that determine the output bytes: the cache key."""
        recipe = {k: v for k, v in to_dict(self).items() if k not in ("out", "workers")}
        return config_hash(recipe)


PRESETS: dict[str, CorpusConfig] = {
    # Offline smoke corpus: CPython's bundled docs, ~465k characters. Not for real pretraining.
    "smoke": CorpusConfig(sources=("pydoc",), vocab_size=8192),
    # The cramming recipe's data: English Wikipedia + BookCorpus (hub, streamed).
    "bookcorpus-wiki": CorpusConfig(
        sources=("hf:wikimedia/wikipedia:20231101.en@train", "hf:rojagtap/bookcorpus@train"), ascii_only=True,
        normalization="uncased", filter_ratio=0.3,
    ),
    # Colossal Clean Crawled Corpus, English (hub, streamed), as in the cramming paper's C4 runs.
    "c4": CorpusConfig(sources=("hf:allenai/c4:en@train",), ascii_only=True, normalization="uncased",
                       filter_ratio=0.3),
}
