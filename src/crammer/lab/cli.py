"""`cram sweep` (equal-budget variants x seeds, then the comparison) and `cram compare` (the same report for any
run folders)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP_EXAMPLE = """\
example (the README's "Recipe lab" shows its real output):
  cram data prepare --source ../shared/data/wiki/sample.txt --out data/sample --vocab-size 2000 --seq-len 64
  cram sweep --data data/sample --out runs/lr-sweep --preset tiny --budget-tokens 200000 --seeds 2 \\
      --variant base --variant lr-high:optim.lr=4e-3 eval.every_steps=10
  -> runs/lr-sweep/{base,lr-high}/seed-{0,1}/ (ordinary `cram pretrain` run folders), the table on
     standard output, runs/lr-sweep/compare.md and compare.html

A variant is NAME[:key=value,...]: any pretraining key (optim.lr=5e-4, masking.fraction=0.4,
model.num_hidden_layers=8, preset=tiny). The first is the baseline. Trailing key=value settings apply to
every variant. Verdict: d = median(variant) - median(baseline) of the final validation loss, noise = the
larger seed spread (max - min); better if d < -noise, worse if d > noise, else within noise (one seed:
no noise estimate). Re-running the same command resumes; a changed variant definition is refused.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from crammer.train.config import PRESETS

    p = sub.add_parser(
        "sweep", help="pretrain variants x seeds on the same budget and data, then compare them",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EXAMPLE,
        description="Equal-budget experiments as one command: every variant x seed is a `cram pretrain` run "
        "folder OUT/NAME/seed-K on the same corpus and budget, the seed their only difference; then the "
        "comparison (OUT/compare.md, compare.html) with a verdict against the first variant.")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="a folder from `cram data prepare`")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="the sweep folder")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", metavar="DURATION", help="wall-clock budget of each run: 90s, 10m, 1.5h")
    budget.add_argument("--budget-tokens", type=int, metavar="N", help="token budget of each run (reproducible)")
    p.add_argument("--preset", default="crammed-bert", choices=sorted(PRESETS),
                   help="pretraining preset of variants that set no preset= (default crammed-bert)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="runs per variant, seeds 0..N-1 (default 1)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at a time (CPU: each gets cores/N threads; GPUs: one run a GPU) (default 1)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME[:key=value,...]",
                   help="a variant (repeatable; the first is the baseline)")
    p.add_argument("--variants", metavar="FILE", help="variants, one a line, as after --variant (# comments)")
    p.add_argument("--glue", metavar="TASKS",
                   help="also fine-tune each final model on these GLUE tasks (e.g. rte,mrpc,stsb,sst2,cola) with "
                   "`cram glue`'s protocol; its settings as glue.KEY=VALUE (glue.epochs=3)")
    p.add_argument("--glue-dir", metavar="DIR", help="local glue_data folder for --glue (default: the hub)")
    p.add_argument("common", nargs="*", metavar="key=value",
                   help="pretraining settings for every variant; glue.KEY=VALUE for --glue")
    p.set_defaults(func=_sweep)

    c = sub.add_parser(
        "compare", help="compare run folders: validation loss, tokens/s and a verdict against a baseline",
        description="The report of `cram sweep` for any run folders (`cram pretrain` runs, sweep members, a "
        "sweep folder for all its members). A run folder named seed-K is a seed of the variant named after "
        "its parent; any other is a variant of its own. Runs validated on another corpus are refused.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or sweep folders")
    c.add_argument("--baseline", metavar="RUN_DIR", help="the baseline's run (or variant) folder (default: the first)")
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="where compare.md/.html/.json go (default: the sweep folder when one is given, else ./compare)")
    c.set_defaults(func=_compare)


def _sweep(args: argparse.Namespace) -> int:
    from crammer.config import parse_duration
    from crammer.lab.sweep import Budget, Glue, parse_variant, read_variants_file, sweep

    from crammer.errors import CrammerError

    texts = list(args.variant) + (read_variants_file(args.variants) if args.variants else [])
    common = [s for s in args.common if not s.startswith("glue.")]
    glue_settings = [s.removeprefix("glue.") for s in args.common if s.startswith("glue.")]
    if (glue_settings or args.glue_dir) and not args.glue:
        raise CrammerError("glue.KEY=VALUE settings and --glue-dir need --glue TASKS")
    glue = Glue(args.glue, args.glue_dir, tuple(glue_settings)) if args.glue else None
    variants = [parse_variant(text, args.preset) for text in texts]
    variants = [type(v)(v.name, v.preset, (*common, *v.overrides)) for v in variants]
    budget = Budget(seconds=parse_duration(args.budget) if args.budget else None, tokens=args.budget_tokens)
    command = ["cram", "sweep", "--data", args.data, "--out", str(args.out),
               *(["--budget", args.budget] if args.budget else ["--budget-tokens", str(args.budget_tokens)]),
               "--preset", args.preset, "--seeds", str(args.seeds), "--parallel", str(args.parallel),
               *(["--glue", args.glue] if args.glue else []), *(["--glue-dir", args.glue_dir] if args.glue_dir else []),
               *[a for text in texts for a in ("--variant", text)], *args.common]
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = sweep(args.data, args.out, variants, budget, seeds=args.seeds, parallel=args.parallel, glue=glue,
                   command=command, log=log)
    print(result.markdown_table())
    print(f"\nwrote {args.out / 'compare.md'} and {args.out / 'compare.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from crammer.lab.compare import COMPARE_HTML, COMPARE_MD, SWEEP_FILE, compare

    out = args.out
    if out is None:
        sweeps = [Path(r) for r in args.runs if (Path(r) / SWEEP_FILE).is_file()]
        out = sweeps[0] if len(args.runs) == 1 and sweeps else Path("compare")
    command = ["cram", "compare", *args.runs, *(["--baseline", args.baseline] if args.baseline else []),
               *(["--out", str(args.out)] if args.out else [])]
    result = compare(args.runs, baseline=args.baseline, out=out, command=command)
    print(result.markdown_table())
    print(f"\nwrote {out / COMPARE_MD} and {out / COMPARE_HTML}")
    return 0
