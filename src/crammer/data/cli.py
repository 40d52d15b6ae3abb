"""`cram data prepare` and `cram data inspect`.

Only the config is imported here: `cram` builds every stage's parser on each call, so the pipeline
(tokenizers, tqdm, numpy shards) is imported when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from crammer.config import apply_overrides, pick_preset
from crammer.data.config import NORMALIZATIONS, ORDERS, PRESETS, CorpusConfig
from crammer.errors import CrammerError

# flag -> CorpusConfig field; a flag left unset keeps the preset's value
_FLAGS = {
    "out": "out", "vocab_size": "vocab_size", "seq_len": "seq_len", "filter_ratio": "filter_ratio",
    "order": "order", "max_docs": "max_docs", "seed": "seed", "tokenizer": "tokenizer",
    "text_field": "text_field", "workers": "workers", "tokenizer_docs": "tokenizer_docs",
    "validation_sequences": "validation_sequences", "normalization": "normalization",
}


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare and inspect pretraining corpora")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "prepare",
        help="raw text -> WordPiece tokenizer + packed training sequences",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train (or reuse) a WordPiece tokenizer, filter, deduplicate, pack and order a corpus.",
        epilog="SRC: a file, folder or glob of .txt (blank-line separated documents), .jsonl/.json\n"
        "(--text-field), .parquet, each optionally .gz/.xz/.zst/.bz2; hf:NAME[:CONFIG][@SPLIT] (hub,\n"
        "streamed); or `pydoc`, CPython's bundled docs: an offline SMOKE corpus for tests and demos.\n"
        "Append ::max_docs=N to a source to cap it, e.g. wiki.jsonl.xz::max_docs=1000.\n"
        "Presets: " + ", ".join(sorted(PRESETS)) + ". Other fields: key=value, e.g. ascii_only=true "
        "shard_sequences=4096 filter_margin=1.5 ascii_only=true.",
    )
    p.add_argument("--source", action="append", metavar="SRC", help="input (repeatable to mix sources)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset")
    p.add_argument("--out", help="output folder (default: data); an existing one is replaced only if it is empty "
                   "or an earlier prepared corpus")
    p.add_argument("--vocab-size", type=int, help="WordPiece vocabulary size (default 32768)")
    p.add_argument("--seq-len", type=int, help="tokens per packed block (default 128)")
    p.add_argument("--filter-ratio", type=float, help="the paper's filter: keep a doc if tokens < ratio*chars; 0: no "
                   "filter (default: 0.3 for English-like text, else against the corpus's own tokens per character)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, help="uncased: NFD, lowercase, strip accents (the "
                   "recipe); cased: NFC only (default auto: uncased for English-like text, else cased)")
    p.add_argument("--order", choices=ORDERS, help="block order (random); none keeps corpus order")
    p.add_argument("--dedup", action="store_true", default=None, help="drop exact duplicate documents")
    p.add_argument("--max-docs", type=int, help="read at most N documents over all sources")
    p.add_argument("--seed", type=int, help="seed of the random order (0)")
    p.add_argument("--tokenizer", metavar="PATH", help="reuse this tokenizer (folder or tokenizer.json)")
    p.add_argument("--tokenizer-docs", type=int, metavar="N", help="train the tokenizer on the first N documents (all)")
    p.add_argument("--validation-sequences", type=int, metavar="N",
                   help="hold out whole documents filling about N blocks as a validation split (default: ~0.5%%, "
                   "at least a few hundred where the corpus allows, at most 16384; 0: none)")
    p.add_argument("--text-field", help="JSON/parquet field holding the text (text)")
    p.add_argument("--skip-bad", action="store_true", default=None, help="skip and count bad records")
    p.add_argument("--workers", type=int, help=f"tokenizer threads (default: one per CPU, {os.cpu_count()} here)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="set any CorpusConfig field")
    p.set_defaults(func=_prepare)

    i = sub.add_parser("inspect", help="print a prepared corpus's statistics and a few decoded sequences")
    i.add_argument("path", metavar="DIR")
    i.add_argument("-n", "--num", type=int, default=3, help="sequences to decode (3)")
    i.add_argument("--verify", action="store_true",
                   help="read every shard and check that each token id is in the vocabulary")
    i.set_defaults(func=_inspect)


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    if args.preset:
        cfg = pick_preset(PRESETS, args.preset, "data preset")
    elif args.source:
        cfg = CorpusConfig()
    else:
        raise CrammerError("data prepare: give --source SRC (e.g. --source pydoc offline) or --preset NAME")
    changes = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    if args.source:
        changes["sources"] = tuple(args.source)
    if args.dedup:
        changes["dedup"] = True
    if args.skip_bad:
        changes["skip_bad"] = True
    return apply_overrides(dataclasses.replace(cfg, **changes), args.overrides)


def _prepare(args: argparse.Namespace) -> int:
    from crammer.data.prepare import prepare

    prepare(config_from_args(args), progress=not args.quiet)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from crammer.data.packed import PackedCorpus

    corpus = PackedCorpus(args.path)
    m = corpus.manifest
    print(f"{corpus.path}: {m.format}, {len(corpus)} sequences x {corpus.seq_len} tokens = "
          f"{corpus.num_tokens:,} tokens, vocab {corpus.vocab_size} ({m.dtype}), {len(m.shards)} shard(s)")
    if m.validation_shards:
        print(f"validation: {m.validation_sequences} sequences from {m.validation_documents} held-out documents")
    else:
        print("validation: none (prepared without a validation split)")
    if m.smoke_corpus:
        print(f"note: {m.note}")
    print(f"sources: {', '.join(m.sources)}")
    print(f"config {m.config_hash}: " + ", ".join(
        f"{k}={m.config.get(k)}" for k in ("vocab_size", "seq_len", "normalization", "filter_ratio", "filter_margin",
                                           "order", "dedup", "max_docs")))
    if m.text:
        print(f"normalization: {m.text.normalization} ({m.text.normalization_reason})")
        print(f"filter: {m.text.filter} ({m.text.filter_reason})")
    for warning in m.warnings:
        print(f"warning: {warning}")
    counts = sorted(dataclasses.asdict(m.counts).items())  # in the manifest file's order
    print("counts: " + ", ".join(f"{k}={v:,}" for k, v in counts if isinstance(v, int)))
    print(f"time: {m.seconds:.1f}s (tokenizer {m.tokenizer_seconds:.1f}s)")
    if args.verify:
        from crammer.data.packed import verify_token_ids

        tokens, shards = verify_token_ids(corpus.path)
        print(f"verified: {tokens:,} token ids in {shards} shard(s), all in the vocabulary")
    tok = corpus.tokenizer()
    for index in range(min(args.num, len(corpus))):
        text = tok.decode(corpus[index].tolist(), skip_special_tokens=False)
        print(f"--- sequence {index} ---\n{text}")
    return 0
