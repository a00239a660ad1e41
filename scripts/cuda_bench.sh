#!/usr/bin/env bash
# CUDA throughput (issue 14's GPU part), run on a lent H100/H200 from the repo root with
# $OUT the output folder. Needs only the cuda xtask binary (`CUDARC_CUDA_VERSION=13000 cargo
# build --release -p xtask --features cuda`, stripped) at .gpub/xtask: the benches use random
# weights (throughput does not depend on them), so no model travels. NVRTC comes from the
# CUDA toolkit or torch's wheels. cubecl autotunes every matmul shape on first use in each
# process (the warm-up iteration absorbs it); CUBECL_AUTOTUNE_LEVEL=minimal keeps that short.
# burn 0.21's CUDA matmul stages f32 as TF32, so the like-for-like PyTorch baseline has TF32 on
# (--baseline-tf32); PyTorch with TF32 off is printed after it for reference.
set -u
. "$(dirname "$0")/cuda_env.sh"
log "MiniLM 32x128, 128x128: forward + train step, PyTorch TF32 baseline"
timeout 220 "$X" bench minilm --device cuda --shapes 32x128,128x128 --iters 20 --json \
  --baseline-python "$PY" --baseline-tf32 --out "$OUT/minilm"
log "BERT-base 32x128: forward + train step, PyTorch TF32 baseline"
timeout 150 "$X" bench minilm --device cuda --size bert-base --shapes 32x128 --iters 20 --json \
  --baseline-python "$PY" --baseline-tf32 --out "$OUT/bertbase"
log "PyTorch, TF32 off (reference)"
for s in minilm bert-base; do for m in forward train_step; do
  timeout 30 "$PY" benches/python/bench_minilm.py --device cuda --size $s --mode $m --batch 32 --seq 128 --iters 20 | tail -1
done; done
log done
