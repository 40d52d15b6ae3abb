#!/usr/bin/env bash
# One device call: a few minutes of the full crammed-bert recipe on a prepared corpus, then the plots.
# Usage (GPU machine, repo root): bash benchmarks/gpu_pretrain.sh DATA_DIR BUDGET [overrides...]
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATA=$1; BUDGET=$2; shift 2
RUN=/tmp/run-crammed-bert
python3 -m crammer pretrain --data "$DATA" --out "$RUN" --budget "$BUDGET" --preset crammed-bert "$@" 2>&1 \
  | tr '\r' '\n' | grep -v "^\s*$" | awk 'NR % 20 == 1 || /cram|rror|Trace|micro/' | tee "$OUT/pretrain.log"
python3 -m crammer plot "$RUN" --out /tmp/plots && tar czf "$OUT/plots.tgz" -C /tmp plots
cp "$RUN/metrics.jsonl" "$RUN/pretrain_config.json" "$OUT/" 2>/dev/null
ls -la "$RUN" "$RUN/final" | tee -a "$OUT/pretrain.log"
