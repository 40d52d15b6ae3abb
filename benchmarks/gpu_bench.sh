#!/usr/bin/env bash
# One device call: `cram bench` on the GPU (micro-batch sweep vs Hugging Face, compile modes, 8 GB sizing).
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_bench.sh [extra cram bench args]
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} | tee "$OUT/env.txt"
bench() { echo "+ cram bench $*" | tee -a "$OUT/bench.txt"; timeout 400 python3 -m crammer bench "$@" 2>&1 | grep -v Warning | tee -a "$OUT/bench.txt"; }
bench --preset crammed-bert --micro-batch ${MICRO_BATCHES:-128,256,512} --steps 30 --warmup 8 --compare hf-bert "$@"
bench --preset crammed-bert --micro-batch auto --memory-limit-gb 8 --steps 20 --warmup 8 --compare none "$@"
