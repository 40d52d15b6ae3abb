"""The recipe lab's own cost and `--parallel` on a CPU, measured with real `cram sweep` runs.

1. Overhead: a 2-variant x 2-seed token-budget sweep of the tiny preset with --parallel 1 and OMP_NUM_THREADS=1
   (one thread a run: on a shared 2-core machine two OpenMP threads can stall for seconds). The sweep's wall time
   minus the sum of its members' own elapsed budget (final/pretraining.json `elapsed_s`) is what the sweep adds:
   each member process's start-up before its budget clock starts (Python, torch, transformers) and its exit,
   the sweep's own start-up (imports, checking the variants, hashing the tokenizer) and the report.
2. --parallel 2 against --parallel 1 on a wall-clock budget: 2 variants x 1 seed x BUDGET each. With
   --parallel 1 each run gets every core (2 threads here), with --parallel 2 each gets one; the sweep's wall time
   and the validation loss each run reached are compared.

The corpus: the first 5000 articles of `../shared/data/wiki/enwiki-2015-00.jsonl.xz`, vocab 8192, blocks of 128,
prepared in a temporary folder. Raw outputs (each sweep's stdout/stderr, compare.md, compare.json) go to
`--results`.

    python benchmarks/lab_sweep.py --results benchmarks/results/lab/DATE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKI = (REPO / ".." / "shared" / "data" / "wiki").resolve()


def cram(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "crammer", *args], env=env, capture_output=True, text=True)


def run_sweep(name: str, args: list[str], results: Path, env: dict | None = None) -> dict:
    started = time.monotonic()
    done = cram("sweep", *args, env=env)
    wall = time.monotonic() - started
    (results / f"{name}.stdout.txt").write_text(done.stdout)
    (results / f"{name}.stderr.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    for file in ("compare.md", "compare.json", "sweep.json"):
        shutil.copy(out / file, results / f"{name}.{file}")
    rows = json.loads((out / "compare.json").read_text())["rows"]
    members = [m for r in rows for m in r["members"]]
    elapsed = sum(m["elapsed_s"] for m in members)
    process = [float(line.rsplit("(", 1)[1].split()[0]) for line in done.stderr.splitlines()
               if ": finished (" in line]
    report = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in done.stderr.splitlines()
              if "sweep: report" in line]
    return {"name": name, "command": ["cram", "sweep", *args], "env": env or {}, "wall_s": wall, "members_elapsed_s": elapsed,
            "members_process_s": sum(process), "report_s": report[0] if report else None,
            "rows": [{k: r[k] for k in ("variant", "val_loss", "val_loss_min", "val_loss_max", "tokens_per_s",
                                         "tokens", "steps", "verdict")} for r in rows],
            "members": [{k: m[k] for k in ("path", "val_loss", "tokens_per_s", "tokens", "elapsed_s")}
                        for m in members]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--budget", default="90s", help="wall-clock budget of each run in part 2")
    parser.add_argument("--tokens", type=int, default=100_000, help="token budget of each run in part 1")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    try:
        data = work / "data"
        prepared = cram("data", "prepare", "--source", str(WIKI / "enwiki-2015-00.jsonl.xz"), "--out", str(data),
                        "--vocab-size", "8192", "--max-docs", "5000")
        if prepared.returncode != 0:
            raise SystemExit(prepared.stderr)
        common = ["--data", str(data), "--preset", "tiny", "--variant", "base", "--variant", "lr-high:optim.lr=4e-3"]
        runs = [run_sweep("overhead", [*common, "--out", str(work / "overhead"), "--budget-tokens", str(args.tokens),
                                       "--seeds", "2", "--parallel", "1"], args.results, {"OMP_NUM_THREADS": "1"})]
        for parallel in (1, 2):
            runs.append(run_sweep(f"parallel-{parallel}", [*common, "--out", str(work / f"parallel-{parallel}"),
                                                           "--budget", args.budget, "--parallel", str(parallel)],
                                  args.results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
               "cores": len(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg(), "runs": runs}
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for run in runs:
        print(f"{run['name']}: wall {run['wall_s']:.1f} s, members' elapsed budget {run['members_elapsed_s']:.1f} s, "
              f"members' processes {run['members_process_s']:.1f} s, report {run['report_s']} s, overhead "
              f"{run['wall_s'] - run['members_elapsed_s']:.1f} s")
        for row in run["rows"]:
            print(f"  {row['variant']}: val loss {row['val_loss']:.4f}, {row['tokens_per_s']:,.0f} tokens/s, "
                  f"{row['tokens']:,.0f} tokens, {row['steps']:.0f} steps")
    print(f"load average at the end: {summary['load_average_at_end']}")


if __name__ == "__main__":
    main()
