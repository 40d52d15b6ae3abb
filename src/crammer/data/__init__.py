"""Corpus stage: raw text -> WordPiece tokenizer -> filtered, ordered, packed token blocks."""

from crammer.data.packed import PackedCorpus

__all__ = ["PackedCorpus"]
