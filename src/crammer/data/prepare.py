"""`cram data prepare`: raw text -> WordPiece tokenizer -> filtered, deduplicated, packed, ordered shards.

The pipeline streams, so memory stays flat in corpus size:
1. (unless a tokenizer is given) train WordPiece: a quick pass for the characters, then one to train
   (see `train_wordpiece`: this is what makes the tokenizer reproducible);
2. the packing pass reads documents in chunks; `workers` threads tokenize each chunk with the Rust
   backend (`encode_batch_fast`), apply the compression filter and return one numpy array of token
   ids with `[SEP]` after each kept document; the main thread deduplicates (first copy wins),
   cuts the stream into `seq_len` blocks and writes staging shards as they fill;
3. the blocks are reordered (random / easy-first / sentence-length / none = corpus order) shard by shard from the
   memory-mapped staging shards into the final `shards/` (only an int per block is held in memory).
Chunks come back in submission order, so the output is byte-identical for any number of workers.
Everything is built in a temporary folder renamed into place at the end (`crammer.io.atomic_dir`); an
existing output is replaced only if it is empty or an earlier prepared corpus. SIGTERM unwinds like
Ctrl-C, so the temporary folder goes with it; one a hard kill leaves behind is deleted by the next run
into the same output (one writer per output folder is assumed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from crammer.config import config_hash, to_dict
from crammer.data import sources as src
from crammer.data.packed import FORMAT, MANIFEST, SHARD_DIR, PackedCorpus, is_prepared_corpus
from crammer.data.tokenizer import build_normalizer, load_tokenizer, save_for_transformers, special_token_ids, train_wordpiece
from crammer.errors import CrammerError, SignalInterrupt
from crammer.io import atomic_dir, atomic_write_json, read_json, remove_stale_temps

Order = Literal["random", "easy-first", "sentence-length", "none"]  # none: corpus order
ORDERS = typing.get_args(Order)
CHUNK_CHARS = 1 << 20  # characters per work item: big enough to amortize a call, small enough to stream
SENTENCE_ENDS = (".", "!", "?")
UNK_WARNING = 0.05  # warn when more than this fraction of the packed tokens are [UNK]


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides the prepared corpus (`out` and `workers` do not change its bytes)."""

    sources: tuple[str, ...] = ("pydoc",)
    out: str = "data"
    vocab_size: int = 32768
    seq_len: int = 128
    filter_ratio: float = 0.3  # keep a document only if n_tokens < ratio * n_chars; 0 disables
    order: Order = "random"
    dedup: bool = False
    max_docs: int | None = None  # cap on documents read over all sources
    seed: int = 0
    tokenizer: str | None = None  # reuse this tokenizer instead of training one
    tokenizer_docs: int | None = None  # train the tokenizer on the first N documents only (None: all)
    text_field: str = "text"
    lowercase: bool = True  # normalization of a trained tokenizer (a given one keeps its own)
    strip_accents: bool = True
    ascii_only: bool = False
    skip_bad: bool = False  # skip and count bad records instead of failing
    shard_sequences: int = 65536  # blocks per shard file
    workers: int | None = None  # tokenizer threads; None = one per CPU

    def recipe_hash(self) -> str:
        """Hash of the fields that determine the output bytes: the cache key."""
        recipe = {k: v for k, v in to_dict(self).items() if k not in ("out", "workers")}
        return config_hash(recipe)


PRESETS: dict[str, DataConfig] = {
    # Offline smoke corpus: CPython's bundled docs, ~465k characters. Not for real pretraining.
    "smoke": DataConfig(sources=("pydoc",), vocab_size=8192),
    # The cramming recipe's data: English Wikipedia + BookCorpus (hub, streamed).
    "bookcorpus-wiki": DataConfig(
        sources=("hf:wikimedia/wikipedia:20231101.en@train", "hf:rojagtap/bookcorpus@train"), ascii_only=True
    ),
    # Colossal Clean Crawled Corpus, English (hub, streamed), as in the cramming paper's C4 runs.
    "c4": DataConfig(sources=("hf:allenai/c4:en@train",), ascii_only=True),
}


def validate(cfg: DataConfig) -> None:
    if not cfg.sources:
        raise CrammerError("data: no --source given")
    for name, value, low in (("vocab_size", cfg.vocab_size, 16), ("seq_len", cfg.seq_len, 2),
                             ("shard_sequences", cfg.shard_sequences, 1), ("workers", cfg.workers, 1),
                             ("tokenizer_docs", cfg.tokenizer_docs, 1)):
        if value is not None and value < low:  # None: the default (one per CPU, all documents)
            raise CrammerError(f"data.{name}: must be >= {low}, got {value}")
    if cfg.filter_ratio < 0:
        raise CrammerError(f"data.filter_ratio: must be >= 0, got {cfg.filter_ratio}")
    if cfg.max_docs is not None and cfg.max_docs <= 0:
        raise CrammerError(f"data.max_docs: must be positive, got {cfg.max_docs}")
    if cfg.order not in ORDERS:
        raise CrammerError(f"data.order: {cfg.order!r} is not one of {', '.join(ORDERS)}")


def keep_document(n_tokens: np.ndarray, n_chars: np.ndarray, ratio: float) -> np.ndarray:
    """The compression filter: text that tokenizes badly (tables, code, foreign script) is dropped."""
    keep = n_tokens > 0
    if ratio > 0:
        keep &= n_tokens < ratio * n_chars
    return keep


# ---- encoding: `workers` threads; the Rust encoder releases the GIL, so they run in parallel -----


@dataclass
class EncodedChunk:
    tokens: np.ndarray  # kept documents' ids, each followed by [SEP]
    doc_lengths: np.ndarray  # tokens per kept document, [SEP] included
    doc_hashes: list[bytes]  # per kept document, only when deduplicating
    filtered: int


@dataclass(frozen=True)
class ChunkEncoder:
    """Tokenize a chunk of documents in one Rust call and filter them; numpy arrays out."""

    tok: Tokenizer
    filter_ratio: float
    sep_id: int
    dedup: bool
    dtype: np.dtype

    def __call__(self, texts: list[str]) -> EncodedChunk:
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        n_tokens = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        n_chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=self.dtype,
                          count=int(n_tokens.sum()))
        keep = keep_document(n_tokens, n_chars, self.filter_ratio)
        kept_ids = ids[np.repeat(keep, n_tokens)]
        kept_lengths = n_tokens[keep]
        tokens = np.insert(kept_ids, np.cumsum(kept_lengths), self.sep_id)
        doc_lengths = kept_lengths + 1
        hashes = []
        if self.dedup:
            bounds = np.concatenate([[0], np.cumsum(doc_lengths)])
            hashes = [hashlib.blake2b(tokens[a:b].tobytes(), digest_size=16).digest()
                      for a, b in zip(bounds[:-1], bounds[1:])]
        return EncodedChunk(tokens, doc_lengths, hashes, int((~keep).sum()))


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _encode_all(chunks: Iterator[list[str]], workers: int, encode: ChunkEncoder) -> Iterator[EncodedChunk]:
    """Encode chunks in order; at most 2 per worker in flight, so reading never runs ahead of memory.

    Threads, not processes: the encoder runs without the GIL, so threads scale like processes
    (measured 2.0x on 2 cores) without each worker paying for a fresh interpreter and for copying
    text and ids between processes. The Rust side's own thread pool is switched off meanwhile, so
    `workers` is the parallelism.
    """
    with _rust_parallelism(False), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(encode, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def _rust_parallelism(enabled: bool) -> Iterator[None]:
    """`tokenizers` reads TOKENIZERS_PARALLELISM at every batch call."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = str(enabled).lower()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


# ---- main side ----------------------------------------------------------------------------------


class BlockWriter:
    """Cuts a token stream into `seq_len` blocks and writes full shards as they fill."""

    def __init__(self, folder: Path, seq_len: int, shard_sequences: int, dtype: np.dtype):
        self.folder, self.seq_len, self.dtype = folder, seq_len, dtype
        self.shard_tokens = shard_sequences * seq_len
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []
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
        self.shards.append({"file": f"{self.folder.name}/{name}", "num_sequences": int(len(blocks))})

    def close(self) -> int:
        """Write the last whole blocks; return how many remainder tokens were dropped."""
        full = (self.buffered // self.seq_len) * self.seq_len
        if full:
            self._flush(full)
        dropped, self.buffer, self.buffered = self.buffered, [], 0
        return dropped

    @property
    def num_sequences(self) -> int:
        return sum(s["num_sequences"] for s in self.shards)


def _staged_blocks(stage: Path, shards: list[dict]) -> Iterator[np.ndarray]:
    for entry in shards:
        arr = np.load(stage.parent / entry["file"], mmap_mode="r")
        yield np.asarray(arr)
        del arr


def sequence_order(order: Order, stage: Path, shards: list[dict], vocab_size: int, sentence_end_ids: list[int],
                   seed: int) -> np.ndarray:
    """The permutation of staged blocks for the chosen ordering (stable, so ties keep corpus order)."""
    n = sum(s["num_sequences"] for s in shards)
    if order == "none":
        return np.arange(n)
    if order == "random":
        return np.random.default_rng(seed).permutation(n)
    if order == "easy-first":
        freq = np.zeros(vocab_size, dtype=np.int64)
        for blocks in _staged_blocks(stage, shards):
            freq += np.bincount(blocks.ravel(), minlength=vocab_size)[:vocab_size]
        keys = np.concatenate([freq[blocks].mean(axis=1) for blocks in _staged_blocks(stage, shards)])
        return np.argsort(-keys, kind="stable")  # common tokens first
    ends = np.asarray(sentence_end_ids, dtype=np.int64)
    counts = np.concatenate([np.isin(blocks, ends).sum(axis=1) for blocks in _staged_blocks(stage, shards)])
    return np.argsort(-counts, kind="stable")  # more sentence ends per block = shorter sentences first


def write_ordered(stage: Path, shards: list[dict], perm: np.ndarray, writer: BlockWriter) -> None:
    """Gather blocks in `perm` order from the staging shards, one output shard at a time.

    Each staging shard is mapped only while it is read, so resident memory stays one shard or so.
    """
    offsets = np.concatenate([[0], np.cumsum([s["num_sequences"] for s in shards])])
    per_shard = writer.shard_tokens // writer.seq_len
    for start in range(0, len(perm), per_shard):
        wanted = perm[start : start + per_shard]
        out = np.empty((len(wanted), writer.seq_len), dtype=writer.dtype)
        source = np.searchsorted(offsets, wanted, side="right") - 1
        for s in np.unique(source):
            sel = source == s
            arr = np.load(stage.parent / shards[s]["file"], mmap_mode="r")
            out[sel] = arr[wanted[sel] - offsets[s]]
            del arr
        writer.write(out)


def tokenizer_fingerprint(name_or_path: str | None) -> str | None:
    """The content hash of a given local tokenizer (its path alone would not notice an edit or a swap), the hub
    name of a remote one, None when the tokenizer is trained here (the recipe hash covers that)."""
    if not name_or_path:
        return None
    given = Path(name_or_path).expanduser()
    path = given / "tokenizer.json" if given.is_dir() else given
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else name_or_path


def check_output(out: Path) -> None:
    """Fail before any reading on an output folder that cannot be written or must not be replaced."""
    resolved = out.resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise CrammerError(f"{out}: is the current folder or one above it, which the output would replace; "
                           "name a new folder, e.g. --out data")
    if resolved.exists():
        replaceable_output(resolved)
    blocking = next((p for p in resolved.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise CrammerError(f"{out}: cannot create the output folder, {blocking} is a file")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrammerError(f"{out}: cannot create the output's parent folder ({e.strerror or e})") from None
    if not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise CrammerError(f"{out}: cannot write in {resolved.parent} (permission denied)")


def replaceable_output(path: Path) -> None:
    """An existing output may be replaced only if it is an empty folder or an earlier prepared corpus: a
    mistyped --out must not delete someone's files."""
    if not path.is_dir():
        raise CrammerError(f"{path}: exists and is a file, not an output folder; choose another --out")
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise CrammerError(f"{path}: cannot read the existing output folder ({e.strerror or e})") from None
    if not empty and not is_prepared_corpus(path):
        raise CrammerError(f"{path}: folder is not empty and is not a prepared corpus (no {MANIFEST} of "
                           "`cram data prepare`); refusing to replace it, choose another --out")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler) unwinds like Ctrl-C, so the temporary folder is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise SignalInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _cached(out: Path, cfg: DataConfig, fingerprints: list) -> bool:
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = read_json(manifest_path)
    except CrammerError:
        return False
    return (manifest.get("config_hash") == cfg.recipe_hash() and manifest.get("source_files") == fingerprints
            and manifest.get("tokenizer_fingerprint") == tokenizer_fingerprint(cfg.tokenizer))


def is_up_to_date(cfg: DataConfig) -> bool:
    """Whether `cfg.out` holds what `prepare(cfg)` would build now (same recipe, input files and tokenizer)."""
    specs = [src.parse_source(s) for s in cfg.sources]
    return _cached(Path(cfg.out).expanduser(), cfg, [src.fingerprint(s) for s in specs])


@_sigterm_as_interrupt()
def prepare(cfg: DataConfig, progress: bool = True) -> Path:
    """Build the prepared corpus at `cfg.out` (or reuse it when the recipe and inputs are unchanged)."""
    validate(cfg)
    out = Path(cfg.out).expanduser()
    check_output(out)
    remove_stale_temps(out.parent, re.escape(out.name))
    specs = [src.parse_source(s) for s in cfg.sources]
    fingerprints = [src.fingerprint(s) for s in specs]
    if _cached(out, cfg, fingerprints):
        if progress:
            print(f"data: {out} is up to date (config {cfg.recipe_hash()}), reusing it")
        return out
    started = time.time()

    def documents(stats: src.ReadStats) -> Iterator[str]:
        return src.read_documents(specs, cfg.text_field, cfg.skip_bad, cfg.max_docs, stats)

    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        passes: list[src.ReadStats] = []  # the trainer reads twice: each pass counts (and caps) on its own

        def training_documents() -> Iterator[str]:
            passes.append(src.ReadStats())
            return itertools.islice(documents(passes[-1]), cfg.tokenizer_docs)

        tok = train_wordpiece(training_documents, cfg.vocab_size,
                              build_normalizer(cfg.lowercase, cfg.strip_accents, cfg.ascii_only), progress)
        if passes[-1].documents_read == 0:
            raise CrammerError(f"{', '.join(cfg.sources)}: empty corpus (no documents with text)")
    tokenizer_seconds = time.time() - started
    vocab_size = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    special = special_token_ids(tok)
    sentence_end_ids = [i for i in (tok.token_to_id(t) for t in SENTENCE_ENDS) if i is not None]

    stats = src.ReadStats()
    all_files = all(s.kind == "file" for s in specs)
    total_bytes = sum(f["bytes"] for fp in fingerprints for f in fp) if all_files else None
    counts = collections.Counter()
    seen: set[bytes] = set()
    with atomic_dir(out, check_existing=replaceable_output) as tmp:
        stage = BlockWriter(tmp / "staging", cfg.seq_len, cfg.shard_sequences, dtype)
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="data: packing", disable=not progress,
                   dynamic_ncols=True)
        encode = ChunkEncoder(tok, cfg.filter_ratio, special["sep"], cfg.dedup, dtype)
        for chunk in _encode_all(_chunks(documents(stats)), cfg.workers or os.cpu_count() or 1, encode):
            tokens = chunk.tokens
            if cfg.dedup:
                fresh = np.empty(len(chunk.doc_hashes), dtype=bool)
                for i, h in enumerate(chunk.doc_hashes):  # in order: the first copy wins
                    fresh[i] = h not in seen
                    seen.add(h)
                counts["documents_deduplicated"] += int((~fresh).sum())
                tokens = tokens[np.repeat(fresh, chunk.doc_lengths)]
                counts["documents_kept"] += int(fresh.sum())
            else:
                counts["documents_kept"] += len(chunk.doc_lengths)
            counts["documents_filtered"] += chunk.filtered
            counts["tokens"] += len(tokens)
            counts["tokens_unk"] += int(np.count_nonzero(tokens == special["unk"]))
            stage.add(tokens)
            bar.update((stats.bytes_read() if all_files else stats.characters_read) - bar.n)
            bar.set_postfix(docs=stats.documents_read, docs_s=f"{stats.documents_read / max(bar.format_dict['elapsed'], 1e-9):.0f}")
        bar.close()
        dropped = stage.close()
        if stats.documents_read == 0:
            raise CrammerError(f"{', '.join(cfg.sources)}: empty corpus (no documents with text)")
        if stage.num_sequences == 0:
            raise CrammerError(
                f"{', '.join(cfg.sources)}: only {counts['tokens']} tokens left after filtering "
                f"({counts['documents_kept']} of {stats.documents_read} documents kept), "
                f"fewer than one block of seq_len={cfg.seq_len}"
            )
        perm = sequence_order(cfg.order, stage.folder, stage.shards, vocab_size, sentence_end_ids, cfg.seed)
        final = BlockWriter(tmp / SHARD_DIR, cfg.seq_len, cfg.shard_sequences, dtype)
        write_ordered(stage.folder, stage.shards, perm, final)
        for entry in stage.shards:
            (tmp / entry["file"]).unlink()
        stage.folder.rmdir()
        save_for_transformers(tok, tmp, cfg.seq_len)
        num_sequences = final.num_sequences
        smoke = any(s.kind == "pydoc" for s in specs)
        manifest = {
            "format": FORMAT,
            "seq_len": cfg.seq_len,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "vocab_size_requested": cfg.vocab_size,
            "special_tokens": special,
            "shards": final.shards,
            "num_sequences": num_sequences,
            "num_tokens": num_sequences * cfg.seq_len,
            "unk_fraction": round(counts["tokens_unk"] / counts["tokens"], 6),
            "config": to_dict(cfg),
            "config_hash": cfg.recipe_hash(),
            "tokenizer_fingerprint": tokenizer_fingerprint(cfg.tokenizer),
            "counts": {
                "documents_read": stats.documents_read,
                "documents_bad": stats.documents_bad,
                "documents_empty": stats.documents_empty,
                "documents_filtered": counts["documents_filtered"],
                "documents_deduplicated": counts["documents_deduplicated"],
                "documents_kept": counts["documents_kept"],
                "characters_read": stats.characters_read,
                "tokens": counts["tokens"],
                "tokens_unk": counts["tokens_unk"],
                "tokens_dropped_remainder": dropped,
                "sequences": num_sequences,
                "documents_per_source": stats.per_source,
            },
            "sources": list(cfg.sources),
            "source_files": fingerprints,
            "smoke_corpus": smoke,
            "note": "smoke corpus (CPython pydoc topics): for tests and demos, not for real pretraining"
            if smoke else "",
            "normalizer": json.loads(tok.to_str())["normalizer"],
            "tokenizer_seconds": round(tokenizer_seconds, 3),
            "seconds": round(time.time() - started, 3),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    PackedCorpus(out)  # the reader accepts what we wrote
    if manifest["unk_fraction"] > UNK_WARNING:
        print(f"data: warning: {out}: {manifest['unk_fraction']:.1%} of the tokens are [UNK]; the tokenizer does "
              "not cover this text (another language or script? trained on too few documents?)", file=sys.stderr)
    if progress:
        c = manifest["counts"]
        print(f"data: {out}: {num_sequences} sequences x {cfg.seq_len} tokens, vocab {vocab_size}, "
              f"{c['documents_kept']}/{c['documents_read']} documents kept, {manifest['seconds']:.1f}s")
    return out
