#!/usr/bin/env bash
# Device check for a lent GPU (one H200, under 5 minutes):
#   1. scripts/bench.py --device gpu: bf16, training batch 128, 8 images x 25 patches
#      per inference batch; Keras-torch and plain PyTorch, and Keras-jax when jax
#      sees a GPU (a CPU-only jaxlib would take the whole budget on ResNet-50);
#   2. a one-epoch bf16 `keras-hyperiqa fit` on the demo set with resnet50;
#   3. the fused batch norm and block-chain tests on the device (torch).
# Results go under $OUT (else ./gpu_check): nvidia-smi.txt, bench/bench.{md,json},
# fit/{summary.json,metrics.csv,config.json,fit.log}, tests.log, times.txt.
#
#   scripts/gpu_check.sh              # on the GPU machine, from the repository root
#   scripts/gpu_check.sh --dry-run    # the same steps on the CPU with resnet_tiny and tiny
#                                     # sizes: checks the commands, not the GPU
set -euo pipefail

cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--dry-run]" >&2; exit 2
fi
OUT_DIR=${OUT:-gpu_check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=${KERAS_BACKEND:-torch}
TIMES="$OUT_DIR/times.txt"
: > "$TIMES"

timed() {  # timed NAME LIMIT_S CMD...: run, log wall time and exit status, never abort the check
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc=0
  echo "== $name: $*" >&2
  timeout "$limit" "$@" || rc=$?
  echo "$name: $((SECONDS - t0)) s, exit $rc" | tee -a "$TIMES" >&2
  return 0
}

if [[ $DRY -eq 1 ]]; then
  DEVICE=cpu
  BENCH_ARGS=(--backbone resnet_tiny --batch-size 2 --reps 1 --warmup 0 --patch-size 64
              --patches-per-image 2 --infer-images 1 --pipeline-images 2)
  FIT_ARGS=(--backbone resnet_tiny --batch-size 8 --train-patches 1 --test-patches 1)
  IMPLS=(--impl keras-torch --impl torch)
else
  DEVICE=gpu
  nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
  BENCH_ARGS=(--backbone resnet50 --batch-size 128 --precision bf16 --reps 5 --warmup 3
              --steps-per-rep 5 --infer-images 8)
  # the original's batch of 96 patches, 25 train / 1 test patch per image
  FIT_ARGS=(--backbone resnet50 --batch-size 96 --train-patches 25 --test-patches 1)
  IMPLS=(--impl keras-torch --impl torch)
  if "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    IMPLS+=(--impl keras-jax)
  else
    echo "jax has no GPU backend here: Keras-jax left out" | tee -a "$TIMES" >&2
  fi
fi

timed bench 200 "$PY" scripts/bench.py --device "$DEVICE" --out "$OUT_DIR/bench" "${IMPLS[@]}" "${BENCH_ARGS[@]}"

RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
mkdir -p "$OUT_DIR/fit"
timed fit 150 "$PY" -m keras_hyperiqa fit --precision bf16 --epochs 1 --out "$RUN/run" "${FIT_ARGS[@]}" \
  > "$OUT_DIR/fit/fit.log" 2>&1
for f in summary.json metrics.csv config.json; do
  if [[ -f "$RUN/run/$f" ]]; then cp "$RUN/run/$f" "$OUT_DIR/fit/"; fi
done
timed tests 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_model_batch_norm.py \
  tests/test_model_backbone_chain.py -k "torch or fallback or detached or keras_files" \
  > "$OUT_DIR/tests.log" 2>&1
cat "$TIMES"
for f in "$OUT_DIR/bench/bench.md" "$OUT_DIR/fit/summary.json"; do
  if [[ -f "$f" ]]; then cat "$f"; fi
done
tail -n 5 "$OUT_DIR/fit/fit.log"
