#!/usr/bin/env bash
# CUDA training-step throughput (issue 14's GPU part: what scripts/cuda_bench.sh could not
# finish): MiniLM 32×128 and 128×128 and BERT-base 32×128 train steps against PyTorch eager
# with TF32 on (burn 0.21 stages f32 matmuls as TF32). Run on a lent H100/H200 from the repo
# root, $OUT the output folder; needs only the stripped cuda xtask at .gpub/xtask
# (`CUDARC_CUDA_VERSION=13000 cargo build --release -p xtask --features cuda`); random weights.
# cubecl autotunes every new matmul/reduction shape on first use and caches the choice on disk,
# so an untimed warm-up process per shape runs first; the timed runs then start warm.
set -u
. "$(dirname "$0")/cuda_env.sh"
log "warm-up (autotune, untimed): MiniLM 32x128 + 128x128 train step"
timeout 200 "$X" bench minilm --device cuda --shapes 32x128,128x128 --workloads train-step --iters 1 --out "$OUT/warm" 2>&1 | grep -v Tuning | tail -4
log "warm-up (autotune, untimed): BERT-base 32x128 train step"
timeout 150 "$X" bench minilm --device cuda --size bert-base --shapes 32x128 --workloads train-step --iters 1 --out "$OUT/warm2" 2>&1 | grep -v Tuning | tail -4
log "timed: MiniLM train step 32x128, 128x128 vs PyTorch TF32"
timeout 100 "$X" bench minilm --device cuda --shapes 32x128,128x128 --workloads train-step --iters 20 --json \
  --baseline-python "$PY" --baseline-tf32 --out "$OUT/minilm" 2>&1 | grep -v Tuning | tail -8
log "timed: BERT-base train step 32x128 vs PyTorch TF32"
timeout 80 "$X" bench minilm --device cuda --size bert-base --shapes 32x128 --workloads train-step --iters 20 --json \
  --baseline-python "$PY" --baseline-tf32 --out "$OUT/bertbase" 2>&1 | grep -v Tuning | tail -6
log done
