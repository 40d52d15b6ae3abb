"""Peak memory of `cram data prepare` against document size: the same ~50 MB of Wikipedia text as ordinary
documents, as one single-line document, and as one block of lines without a blank line.

The inputs are written to a temporary folder at run time from `../shared/data/wiki` (never kept):
- `normal.txt`: articles as in `sample.txt` (one paragraph per line, a blank line between articles);
- `one-line.txt`: the same text with every line break turned into a space: one 50 MB line, one document;
- `no-blank-lines.txt`: the same paragraphs with the blank lines left out: one 50 MB block of lines.
Each is prepared by `python -m crammer data prepare` in a fresh process, with a given tokenizer (WordPiece,
vocab 32768, trained beforehand on 400 articles) and with a tokenizer trained on the input itself.
Peak RSS is the child's own maximum resident set (`wait4`'s ru_maxrss: exact, not sampled). Linux counts
the launching process's resident set at the fork into it, so this script stays small (~20 MB): the inputs
are written by a child of their own.

    python benchmarks/long_documents.py                 # ~50 MB inputs (about 6 minutes on 2 cores)
    python benchmarks/long_documents.py --mb 5          # smoke run
    python benchmarks/long_documents.py --src OLD/src   # the same runs with another checkout's code
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wiki"
REPO_SRC = Path(__file__).resolve().parents[1] / "src"


def articles(megabytes: float) -> list[list[str]]:
    """Wikipedia articles (as lists of paragraphs) until `megabytes` of UTF-8 text."""
    out, size = [], 0
    for shard in sorted(WIKI.resolve().glob("enwiki-2015-*.jsonl.xz")):
        with lzma.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                paragraphs = [p for p in json.loads(line)["text"].split("\n") if p.strip()]
                if paragraphs:
                    out.append(paragraphs)
                    size += sum(len(p.encode()) + 1 for p in paragraphs)
                if size >= megabytes * 1e6:
                    return out
    raise SystemExit(f"not enough Wikipedia text under {WIKI}")


def write_inputs(folder: Path, megabytes: float) -> dict[str, Path]:
    docs = articles(megabytes)
    files = {"normal": folder / "normal.txt", "one-line": folder / "one-line.txt",
             "no-blank-lines": folder / "no-blank-lines.txt"}
    files["normal"].write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    files["one-line"].write_text(" ".join(" ".join(d) for d in docs) + "\n", encoding="utf-8")
    files["no-blank-lines"].write_text("\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return files


def prepare(source: Path, out: Path, tokenizer: str | None, src: Path, workers: int) -> dict:
    """One `cram data prepare` in a fresh process: wall seconds, its peak RSS, the manifest's counts."""
    cmd = [sys.executable, "-m", "crammer", "data", "prepare", "--source", str(source), "--out", str(out),
           "--workers", str(workers), "--quiet"]
    cmd += ["--tokenizer", tokenizer] if tokenizer else ["--vocab-size", "32768"]
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "error": err.strip()[-300:] or
                f"exit {proc.returncode}"}
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "documents": manifest["counts"]["documents_read"],
            "sequences": manifest["num_sequences"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="size of each input in MB (50)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--src", type=Path, default=REPO_SRC, help="the crammer sources to run (this checkout's)")
    parser.add_argument("--only", help="comma-separated inputs to run (normal, one-line, no-blank-lines)")
    parser.add_argument("--_write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._write:
        write_inputs(args._write, args.mb)
        return
    scratch = Path(tempfile.mkdtemp(prefix="crammer-long-docs-"))
    try:
        subprocess.run([sys.executable, __file__, "--_write", str(scratch), "--mb", str(args.mb)], check=True)
        files = {"normal": scratch / "normal.txt", "one-line": scratch / "one-line.txt",
                 "no-blank-lines": scratch / "no-blank-lines.txt"}
        tok_corpus = scratch / "tokenizer-corpus"
        subprocess.run([sys.executable, "-m", "crammer", "data", "prepare", "--source",
                        f"{max(WIKI.resolve().glob('enwiki-2015-*.jsonl.xz'))}::max_docs=400",
                        "--out", str(tok_corpus), "--vocab-size", "32768", "--quiet"],
                       env={**os.environ, "PYTHONPATH": str(REPO_SRC)}, check=True)
        import resource
        from importlib.metadata import version

        print(f"device: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
              f"tokenizers {version('tokenizers')}; code: {args.src}; workers {args.workers}; this script's own "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        print()
        print("| input | tokenizer | documents | sequences | wall s | peak RSS |")
        print("|---|---|---:|---:|---:|---:|")
        only = args.only.split(",") if args.only else list(files)
        for tokenizer in (str(tok_corpus), None):
            for kind in only:
                path = files[kind]
                r = prepare(path, scratch / "out", tokenizer, args.src, args.workers)
                label = f"{kind} ({path.stat().st_size / 1e6:.1f} MB)"
                which = "given" if tokenizer else "trained (vocab 32768)"
                counts = f"failed: {r['error']} | " if "error" in r else f"{r['documents']} | {r['sequences']}"
                print(f"| {label} | {which} | {counts} | {r['seconds']:.1f} | {r['peak_mb']:.0f} MB |", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
