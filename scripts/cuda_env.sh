# Shared setup of the GPU scripts (sourced by scripts/cuda_bench.sh and cuda_train.sh, run on a
# lent H100/H200 from the repo root with $OUT the output folder): log to $OUT/log.txt, the GPU
# and PyTorch versions, NVRTC on the library path (cudarc loads it at run time),
# CUBECL_AUTOTUNE_LEVEL=minimal, the cuda xtask at .gpub/xtask as $X, and /work/main pointing
# here (xtask finds benches/python through its compile-time manifest dir).
log() { echo "== $(date +%T) $*"; }
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
log start; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
PY=/opt/torch/.venv/bin/python3; [ -x "$PY" ] || PY=python3
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
NV=/usr/local/cuda-13.0/lib64
[ -e "$NV/libnvrtc.so" ] || NV=$(dirname "$(find / -name 'libnvrtc.so*' -not -path '/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$NV:${LD_LIBRARY_PATH:-}" CUBECL_AUTOTUNE_LEVEL=minimal
X=$PWD/.gpub/xtask; chmod +x "$X"
mkdir -p /work && for d in /work/main /work/wt-cuda; do [ -e $d ] || ln -s "$PWD" $d; done
