"""Throughput and peak memory of `cram data prepare` vs the usual `datasets` recipe.

Both turn the same Wikipedia `.jsonl.xz` shards into packed blocks of `seq_len` tokens with the same
fast WordPiece tokenizer (trained once beforehand, timed separately):
- crammer: `crammer.data.prepare` with `--tokenizer` and `--workers N` (its full pipeline: filter,
  pack, random order, shards + manifest);
- baseline: `Dataset.from_generator` over the same documents, `.map(tokenize, batched=True,
  num_proc=N)`, then the "group texts" `.map(batched=True, num_proc=N)`; two variants:
  `lean` (input_ids only, [SEP] after each document: the same output as crammer) and `run_mlm`
  (transformers' examples/run_mlm.py as written: default call with special-tokens mask, all columns grouped).
Each run is a fresh subprocess; peak RSS is the sum over it and its children, sampled every 50 ms.
MB/s counts the UTF-8 bytes of the documents' text.

    python benchmarks/data_prepare.py            # ~57 MB and ~117 MB of text (a few minutes on 2 cores)
    python benchmarks/data_prepare.py --quick    # ~6 MB smoke run
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wiki"
SEQ_LEN = 128


def iter_texts(files: list[str], max_docs: int | None):
    n = 0
    for f in files:
        with lzma.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if max_docs is not None and n >= max_docs:
                    return
                text = json.loads(line)["text"]
                if text.strip():
                    n += 1
                    yield text


def run_crammer(files: list[str], max_docs: int | None, tokenizer: str, out: str, workers: int) -> dict:
    from crammer.data.config import CorpusConfig
    from crammer.data.prepare import prepare

    cap = f"::max_docs={max_docs}" if max_docs else ""
    cfg = CorpusConfig(sources=tuple(f + cap for f in files[:1]) + tuple(files[1:]), out=out, tokenizer=tokenizer,
                     seq_len=SEQ_LEN, workers=workers)
    start = time.perf_counter()
    prepare(cfg, progress=False)
    seconds = time.perf_counter() - start
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    return {"seconds": seconds, "sequences": manifest["num_sequences"]}


def run_baseline(files: list[str], max_docs: int | None, tokenizer: str, out: str, workers: int,
                 recipe: str = "lean") -> dict:
    from itertools import chain

    from datasets import Dataset, disable_progress_bars
    from transformers import AutoTokenizer

    disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    sep = tok.sep_token_id

    def tokenize(batch):
        if recipe == "run_mlm":  # transformers' examples/run_mlm.py: all columns, [CLS] ... [SEP] per doc
            return tok(batch["text"], return_special_tokens_mask=True, verbose=False)
        enc = tok(batch["text"], add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                  verbose=False)
        return {"input_ids": [ids + [sep] for ids in enc["input_ids"]]}

    def group_texts(batch):
        out = {}
        for key, column in batch.items():
            stream = list(chain(*column))
            total = len(stream) // SEQ_LEN * SEQ_LEN
            out[key] = [stream[i : i + SEQ_LEN] for i in range(0, total, SEQ_LEN)]
        return out

    start = time.perf_counter()
    ds = Dataset.from_generator(lambda: ({"text": t} for t in iter_texts(files, max_docs)), cache_dir=out)
    ds = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
    ds = ds.map(group_texts, batched=True, num_proc=workers)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "sequences": len(ds)}


def measure(kind: str, files: list[str], max_docs: int | None, tokenizer: str, workers: int, scratch: Path) -> dict:
    """Run one job in a fresh subprocess; sample the RSS of its process tree."""
    out = scratch / f"{kind}-{time.monotonic_ns()}"
    cmd = [sys.executable, __file__, "--_child", kind, "--_out", str(out), "--_tokenizer", tokenizer,
           "--workers", str(workers), "--_max-docs", str(max_docs or 0), *files]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    stdout = proc.stdout.read()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return {**result, "peak_rss_mb": peak / 1e6, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small size (~6 MB) for a smoke run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--scratch", default=None, help="folder for outputs (default: a temp dir)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    parser.add_argument("--_tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--_max-docs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args._child:
        common = (args.files, args._max_docs or None, args._tokenizer, args._out, args.workers)
        if args._child == "crammer":
            result = run_crammer(*common)
        else:
            result = run_baseline(*common, recipe=args._child.removeprefix("baseline-"))
        print(json.dumps(result))
        return

    shards = sorted(str(p) for p in WIKI.resolve().glob("enwiki-2015-*.jsonl.xz"))
    if not shards:
        raise SystemExit(f"no Wikipedia shards under {WIKI}")
    sizes = [(shards[:1], 400)] if args.quick else [(shards[:1], None), (shards[:2], None)]
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="crammer-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)

    from crammer.data.config import CorpusConfig
    from crammer.data.prepare import prepare

    start = time.perf_counter()
    tok_dir = scratch / "tokenizer-corpus"
    prepare(CorpusConfig(sources=(shards[0] + "::max_docs=400",), out=str(tok_dir), vocab_size=args.vocab_size,
                       seq_len=SEQ_LEN), progress=False)
    tok_seconds = time.perf_counter() - start

    import numpy, tokenizers, datasets, transformers  # noqa: E401 (versions for the table)

    print(f"device: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs; python "
          f"{platform.python_version()}, numpy {numpy.__version__}, tokenizers {tokenizers.__version__}, "
          f"datasets {datasets.__version__}, transformers {transformers.__version__}")
    print(f"tokenizer: WordPiece vocab {args.vocab_size} trained on 400 docs in {tok_seconds:.1f}s (not timed below); "
          f"seq_len {SEQ_LEN}, workers/num_proc {args.workers}")
    print()
    print("| raw text | pipeline | MB/s | crammer speed-up | wall s | CPU s (tree) | peak RSS (tree) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for files, max_docs in sizes:
        n_docs, n_bytes = 0, 0
        for text in iter_texts(files, max_docs):
            n_docs += 1
            n_bytes += len(text.encode("utf-8"))
        mb = n_bytes / 1e6
        results = {kind: measure(kind, files, max_docs, str(tok_dir), args.workers, scratch)
                   for kind in ("crammer", "baseline-lean", "baseline-run_mlm")}
        ours = results["crammer"]["seconds"]
        for kind, r in results.items():
            rate, speedup = mb / r["seconds"], "-" if kind == "crammer" else f"{r['seconds'] / ours:.2f}x"
            print(f"| {mb:.1f} MB ({n_docs} docs) | {kind} | {rate:.2f} | {speedup} | {r['seconds']:.1f} | "
                  f"{r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} MB |", flush=True)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
