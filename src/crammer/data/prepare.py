"""`cram data prepare`: raw text -> WordPiece tokenizer -> filtered, deduplicated, packed, ordered shards.

The pipeline streams, so memory stays flat in corpus size and in document size (a long document is read
and tokenized in bounded pieces, `crammer.data.encode.document_pieces`):
1. (unless a tokenizer is given) train WordPiece: a quick pass for the characters, then one to train
   (see `train_wordpiece`: this is what makes the tokenizer reproducible); each pass reads the
   sources afresh, with its own caps and counts;
2. the packing pass tokenizes, filters and deduplicates the documents (`crammer.data.encode`) and cuts
   the stream into `seq_len` blocks in staging shards;
3. the blocks are reordered into the final `shards/` (`crammer.data.pack`), then the tokenizer and
   `manifest.json` (`crammer.data.manifest`) are written beside them.
The corpus is built in a temporary folder and renamed into place (`crammer.data.output`), by one process at
a time (`crammer.io.exclusive_folder`: a second is refused, naming the first's pid). An existing
output whose manifest has the same recipe hash, input fingerprints and given tokenizer is reused as is.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tokenizers import Tokenizer

from crammer.config import to_dict
from crammer.data.config import CorpusConfig
from crammer.data.encode import (ChunkEncoder, CompressionFilter, Deduplicator, chunk_documents, document_pieces,
                                 encode_all)
from crammer.data.language import choose, compression_filter, take_sample
from crammer.data.manifest import FORMAT, SHARD_DIR, VALIDATION_DIR, Counts, Manifest, Shard, TextChoices
from crammer.data.output import check_output, replaceable_output, sigterm_as_interrupt
from crammer.data.pack import BlockWriter, sentence_end_ids, sequence_order, shard_dtype, write_ordered
from crammer.data.packed import PackedCorpus
from crammer.data.sources import ReadStats, Source, parse_source, read_documents
from crammer.data.split import DocumentLengths, held_out_sum, held_out_threshold, split_documents, validation_target
from crammer.data.tokenizer import (load_tokenizer, normalizer_for, save_for_transformers, special_token_ids,
                                    tokenizer_fingerprint, train_wordpiece)
from crammer.errors import CrammerError
from crammer.io import atomic_dir, exclusive_folder, remove_stale_temps
from crammer.progress import progress_bar

UNK_WARNING = 0.05  # warn when more than this fraction of the packed tokens are [UNK]
DROP_WARNING = 0.2  # warn when one rule drops more than this share of the documents read
SMOKE_NOTE = "smoke corpus (CPython pydoc topics): for tests and demos, not for real pretraining"


def is_up_to_date(cfg: CorpusConfig) -> bool:
    """Whether `cfg.out` holds what `prepare(cfg)` would build now (same recipe, input files and tokenizer)."""
    sources = [parse_source(s) for s in cfg.sources]
    return _cached(Path(cfg.out).expanduser(), cfg, [s.fingerprint() for s in sources])


@sigterm_as_interrupt()
def prepare(cfg: CorpusConfig, progress: bool = True) -> Path:
    """Build the prepared corpus at `cfg.out` (or reuse it when the recipe and inputs are unchanged)."""
    out = Path(cfg.out).expanduser()
    check_output(out)
    with exclusive_folder(out, "prepared corpus"):  # one writer: the clean-up of stale temporaries relies on it
        return _build_or_reuse(cfg, out, progress)


def _build_or_reuse(cfg: CorpusConfig, out: Path, progress: bool) -> Path:
    remove_stale_temps(out.parent, re.escape(out.name))
    sources = [parse_source(s) for s in cfg.sources]
    fingerprints = [s.fingerprint() for s in sources]
    if _cached(out, cfg, fingerprints):
        if progress:
            print(f"data: {out} is up to date (config {cfg.recipe_hash()}), reusing it")
        return out
    started = time.time()
    sample = _Sample(cfg, sources)
    choices = choose(cfg.normalization, cfg.tokenizer, cfg.filter_ratio, sample)
    tok = _tokenizer_for(cfg, sources, choices.normalization, progress)
    compression = compression_filter(choices, cfg.filter_margin, cfg.filter_margin_unspaced, tok, sample)
    del sample
    tokenizer_seconds = time.time() - started
    with atomic_dir(out, check_existing=replaceable_output) as tmp:
        packed, counts = _pack(cfg, sources, fingerprints, tok, compression, tmp, progress)
        save_for_transformers(tok, tmp, cfg.seq_len)
        manifest = _manifest(cfg, sources, fingerprints, tok, packed, counts, choices, tokenizer_seconds, started)
        manifest.write(tmp)
    PackedCorpus(out)  # the reader accepts what we wrote
    _summarize(out, manifest, progress)
    return out


def _cached(out: Path, cfg: CorpusConfig, fingerprints: list[list[dict]]) -> bool:
    try:
        manifest = Manifest.read(out)
    except CrammerError:  # none there, or not one we can read: build anew
        return False
    return (manifest.config_hash == cfg.recipe_hash() and manifest.source_files == fingerprints
            and manifest.tokenizer_fingerprint == tokenizer_fingerprint(cfg.tokenizer))


def _documents(cfg: CorpusConfig, sources: list[Source], stats: ReadStats) -> Iterator[str]:
    return read_documents(sources, cfg.text_field, cfg.skip_bad, cfg.max_docs, stats)


class _Sample:
    """The first documents of each source (`crammer.data.language.take_sample`), read once when first asked for."""

    def __init__(self, cfg: CorpusConfig, sources: list[Source]):
        self.cfg, self.sources, self.texts = cfg, sources, None

    def __call__(self) -> list[str]:
        if self.texts is None:
            self.texts = take_sample(_documents(self.cfg, [source], ReadStats()) for source in self.sources)
        return self.texts


def _empty_corpus(cfg: CorpusConfig) -> CrammerError:
    return CrammerError(f"{', '.join(cfg.sources)}: empty corpus (no documents with text)")


def _tokenizer_for(cfg: CorpusConfig, sources: list[Source], normalization: str, progress: bool) -> Tokenizer:
    """The given tokenizer, or WordPiece trained on the corpus (on its first `tokenizer_docs` documents) with
    the chosen normalization (`uncased` or `cased`)."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    passes: list[ReadStats] = []  # the trainer reads twice: each pass counts (and caps) on its own

    def training_documents() -> Iterator[str]:
        passes.append(ReadStats())
        documents = itertools.islice(_documents(cfg, sources, passes[-1]), cfg.tokenizer_docs)
        # a long document in pieces, as for encoding: the trainer's memory grows with its input's size too
        return (piece for document in documents for piece in document_pieces(document))

    tok = train_wordpiece(training_documents, cfg.vocab_size,
                          normalizer_for(normalization, cfg.ascii_only), progress)
    if passes[-1].documents_read == 0:
        raise _empty_corpus(cfg)
    return tok


def _pack(cfg: CorpusConfig, sources: list[Source], fingerprints: list[list[dict]], tok: Tokenizer,
          compression: CompressionFilter | None, folder: Path, progress: bool) -> tuple[Packed, Counts]:
    """Cut the documents' tokens into blocks, hold out the validation documents, write the training blocks
    in `cfg.order` to `folder`'s shards."""
    stats = ReadStats()
    staged = BlockWriter(folder / "staging", cfg.seq_len, cfg.shard_sequences, shard_dtype(tok.get_vocab_size()))
    documents = DocumentLengths(folder / "staging-documents.i64")
    characters = DocumentLengths(folder / "staging-characters.i64")
    with _packing_bar(sources, fingerprints, stats, progress) as advance:
        tally = _stage(cfg, tok, compression, _documents(cfg, sources, stats), staged, documents, characters, advance)
    dropped = staged.close()
    lengths = documents.close()
    chars = characters.close()
    if stats.documents_read == 0:
        raise _empty_corpus(cfg)
    if staged.num_sequences == 0:
        raise CrammerError(
            f"{', '.join(cfg.sources)}: only {tally['tokens']} tokens left after filtering "
            f"({tally['documents_kept']} of {stats.documents_read} documents kept), "
            f"fewer than one block of seq_len={cfg.seq_len}"
        )
    training, validation, held_out = _hold_out(cfg, staged, lengths, chars, folder)
    del lengths, chars
    documents.path.unlink()
    characters.path.unlink()
    dropped += training.close() + (validation.close() if validation else 0)
    final = BlockWriter(folder / SHARD_DIR, cfg.seq_len, cfg.shard_sequences, staged.dtype)
    order = sequence_order(cfg.order, training, tok.get_vocab_size(), sentence_end_ids(tok), cfg.seed)
    write_ordered(training, order, final)
    training.remove()
    packed = Packed(final.shards, validation.shards if validation else [], *held_out)
    return packed, Counts(
        documents_read=stats.documents_read, documents_bad=stats.documents_bad,
        documents_empty=stats.documents_empty, documents_repaired=stats.documents_repaired,
        characters_read=stats.characters_read,
        documents_filtered=tally["documents_filtered"], documents_deduplicated=tally["documents_deduplicated"],
        documents_kept=tally["documents_kept"], tokens=tally["tokens"], tokens_unk=tally["tokens_unk"],
        tokens_dropped_remainder=dropped, sequences=final.num_sequences, documents_per_source=stats.per_source,
    )


@dataclass
class Packed:
    shards: list[Shard]  # training blocks
    validation_shards: list[Shard]
    validation_documents: int
    validation_characters: int  # of the held-out documents, as read
    validation_text_tokens: int  # their tokens, [SEP]s not counted


def _hold_out(cfg: CorpusConfig, staged: BlockWriter, lengths: np.ndarray, chars: np.ndarray,
              folder: Path) -> tuple[BlockWriter, BlockWriter | None, tuple[int, int, int]]:
    """(training blocks, validation blocks, (documents, characters, text tokens) held out): the staged blocks
    split by document, or the staged blocks themselves when there is no validation split."""
    target = validation_target(cfg.validation_sequences, staged.num_sequences)
    if target == 0 or len(lengths) < 2:
        return staged, None, (0, 0, 0)
    threshold = held_out_threshold(lengths, target * cfg.seq_len, cfg.seed)
    training = BlockWriter(folder / "staging-training", cfg.seq_len, cfg.shard_sequences, staged.dtype)
    validation = BlockWriter(folder / VALIDATION_DIR, cfg.seq_len, cfg.shard_sequences, staged.dtype)
    held_out = split_documents(staged.blocks(), lengths, threshold, cfg.seed, training, validation,
                               staged.shard_tokens)
    staged.remove()
    text_tokens = held_out_sum(lengths, threshold, cfg.seed) - held_out  # one [SEP] per document
    return training, validation, (held_out, held_out_sum(chars, threshold, cfg.seed), text_tokens)


def _stage(cfg: CorpusConfig, tok: Tokenizer, compression: CompressionFilter | None, documents: Iterator[str],
           staged: BlockWriter, lengths: DocumentLengths, characters: DocumentLengths,
           advance: Callable[[], None]) -> collections.Counter:
    """Encode, filter and deduplicate the documents into `staged` (their token and character counts into
    `lengths` and `characters`); the counts of documents and tokens."""
    special = special_token_ids(tok)
    encode = ChunkEncoder(tok, compression, special["sep"], cfg.dedup, staged.dtype)
    dedup = Deduplicator() if cfg.dedup else None
    tally: collections.Counter = collections.Counter()
    for chunk in encode_all(chunk_documents(documents), cfg.workers or os.cpu_count() or 1, encode):
        tokens, doc_lengths, doc_chars = dedup.filter(chunk) if dedup else (chunk.tokens, chunk.doc_lengths,
                                                                             chunk.doc_chars)
        tally["documents_filtered"] += chunk.filtered
        tally["documents_kept"] += len(chunk.doc_lengths)  # by the filter; duplicates are taken off below
        tally["tokens"] += len(tokens)
        tally["tokens_unk"] += int(np.count_nonzero(tokens == special["unk"]))
        staged.add(tokens)
        lengths.add(doc_lengths)
        characters.add(doc_chars)
        advance()
    tally["documents_deduplicated"] = dedup.duplicates if dedup else 0
    tally["documents_kept"] -= tally["documents_deduplicated"]
    return tally


@contextlib.contextmanager
def _packing_bar(sources: list[Source], fingerprints: list[list[dict]], stats: ReadStats,
                 show: bool) -> Iterator[Callable[[], None]]:
    """Progress in on-disk bytes when every source is local files (the total is known), else in characters."""
    in_bytes = all(s.tracks_bytes for s in sources)
    total = sum(f["bytes"] for fp in fingerprints for f in fp) if in_bytes else None
    bar = progress_bar(show=show, total=total, unit="B", unit_scale=True, desc="data: packing", dynamic_ncols=True)

    def advance() -> None:
        bar.update((stats.bytes_read() if in_bytes else stats.characters_read) - bar.n)
        rate = stats.documents_read / max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix(docs=stats.documents_read, docs_s=f"{rate:.0f}")

    try:
        yield advance
    finally:
        bar.close()


def drop_warnings(counts: Counts, choices: TextChoices) -> list[str]:
    """A line for each rule that dropped more than DROP_WARNING of the documents: the rule, the share, the
    setting that changes it."""
    if choices.filter == "none":
        rule, setting = "no filter: documents left without a token by normalization", "ascii_only=false keeps them"
    elif choices.filter == "corpus":
        rule = (f"tokens < {choices.filter_spaced:g} x characters (+ {choices.filter_unspaced:g} x characters "
                "of scripts without spaces), margins times the corpus's medians" if choices.filter_unspaced
                else f"tokens < {choices.filter_spaced:g} x characters, filter_margin times the corpus's median")
        setting = ("raise filter_margin=M (filter_margin_unspaced=M) to keep more, or --filter-ratio 0 for no "
                   "filter")
    else:
        rule = f"tokens < {choices.filter_spaced:g} x characters"
        setting = "--filter-ratio R (higher keeps more; 0: no filter; unset: chosen from the text)"
    seen = counts.documents_read + counts.documents_bad
    rules = [(counts.documents_filtered, f"the compression filter ({rule})", setting),
             (counts.documents_deduplicated, "deduplication (exact duplicates after normalization)",
              "leave out --dedup to keep them"),
             (counts.documents_bad, "bad records, skipped", "they are malformed; without --skip-bad the first one "
              "stops the run and is named")]
    return [f"{what} dropped {dropped / seen:.1%} of the documents ({dropped:,} of {seen:,}); {change}"
            for dropped, what, change in rules if seen and dropped / seen > DROP_WARNING]


def _manifest(cfg: CorpusConfig, sources: list[Source], fingerprints: list[list[dict]], tok: Tokenizer,
              packed: Packed, counts: Counts, choices: TextChoices, tokenizer_seconds: float,
              started: float) -> Manifest:
    smoke = any(s.smoke for s in sources)
    unk_fraction = round(counts.tokens_unk / counts.tokens, 6)
    warnings = drop_warnings(counts, choices)
    if counts.documents_repaired:
        warnings.append(f"{counts.documents_repaired} document(s) held lone surrogates (invalid Unicode, e.g. JSON's "
                        "\"\\ud800\"); each was replaced by U+FFFD")
    if unk_fraction > UNK_WARNING:
        warnings.append(f"{unk_fraction:.1%} of the tokens are [UNK]; the tokenizer does not cover this text "
                        "(another language or script? trained on too few documents?)")
    return Manifest(
        format=FORMAT, seq_len=cfg.seq_len, dtype=shard_dtype(tok.get_vocab_size()).name,
        vocab_size=tok.get_vocab_size(), vocab_size_requested=cfg.vocab_size, special_tokens=special_token_ids(tok),
        shards=packed.shards, num_sequences=counts.sequences, num_tokens=counts.sequences * cfg.seq_len,
        validation_shards=packed.validation_shards,
        validation_sequences=sum(shard.num_sequences for shard in packed.validation_shards),
        validation_documents=packed.validation_documents,
        validation_characters=packed.validation_characters, validation_text_tokens=packed.validation_text_tokens,
        unk_fraction=unk_fraction, config=to_dict(cfg), config_hash=cfg.recipe_hash(),
        tokenizer_fingerprint=tokenizer_fingerprint(cfg.tokenizer), counts=counts, sources=list(cfg.sources),
        source_files=fingerprints, smoke_corpus=smoke, note=SMOKE_NOTE if smoke else "",
        normalizer=json.loads(tok.to_str())["normalizer"], tokenizer_seconds=round(tokenizer_seconds, 3),
        seconds=round(time.time() - started, 3), text=choices, warnings=warnings,
    )


def _summarize(out: Path, manifest: Manifest, progress: bool) -> None:
    for warning in manifest.warnings:
        print(f"data: warning: {out}: {warning}", file=sys.stderr)
    if progress:
        c = manifest.counts
        held_out = (f" (+ {manifest.validation_sequences} validation sequences from {manifest.validation_documents} "
                    "held-out documents)") if manifest.validation_sequences else ""
        print(f"data: {out}: {manifest.num_sequences} sequences{held_out} x {manifest.seq_len} tokens, vocab "
              f"{manifest.vocab_size}, {c.documents_kept}/{c.documents_read} documents kept, {manifest.seconds:.1f}s")
        if manifest.text:
            print(f"data: normalization {manifest.text.normalization} ({manifest.text.normalization_reason}); "
                  f"filter {manifest.text.filter} ({manifest.text.filter_reason})")
