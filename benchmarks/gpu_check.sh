#!/usr/bin/env bash
# One prepared check for a GPU machine (issue #18); CI never runs it.
#
# Needs only what such a machine has: Python 3.10+, torch with CUDA, transformers, accelerate,
# sentence-transformers (pytest for the `gpu` tests; without it they are reported as not run).
# No hub, no `datasets`, no shared data, csekit not installed: it runs from this source tree.
# Ends in about 9 minutes on one H100/H200 (pytest at most 270 s, the benchmark 480 s):
#   1. pytest -m gpu tests/test_gpu.py  (bf16/fp16 exact resume, native == transformers on
#      CUDA, lean forward and length sub-batches == transformers' forward on CUDA, 2-GPU DDP
#      == 1 GPU when 2 GPUs are visible)
#   2. benchmarks/gpu_check.py: training throughput (bert-base shape, bf16, batch 64 and 512,
#      length 32: sentences/s, MFU, ClusterNS overhead); the training forward's CUDA defaults
#      (lean forward and sub-batches: equality in float64 and step time against transformers'
#      forward, with the decision they support); encode throughput against
#      sentence-transformers on the same GPU; gradient caching (issue #26): peak GPU memory
#      and step time at batch 1024 with --mini-batch-size 64 against batch 64 and batch 1024.
# Results (naming the GPU) go to $OUT if set, else benchmarks/results/.
#
# Usage: bash benchmarks/gpu_check.sh        (PYTHON=python3.12 to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false CI=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/benchmarks/results}
mkdir -p "$OUTDIR"
start=$(date +%s)

{ nvidia-smi || echo "nvidia-smi not available"; } > "$OUTDIR/gpu_check_nvidia_smi.txt" 2>&1
"$PY" -c "import csekit, sys; print('csekit from', csekit.__file__); sys.exit(0)" || exit 2

summary="not run: pytest is not installed"
rc_tests=0
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 270 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -m gpu -rs \
        tests/test_gpu.py 2>&1 | tee "$OUTDIR/gpu_check_pytest.txt"
    rc_tests=${PIPESTATUS[0]}
    summary=$(grep -E "passed|failed|skipped|error" "$OUTDIR/gpu_check_pytest.txt" | tail -n 1)
    [ "$rc_tests" = 124 ] && summary="timed out after 270 s: $summary"
fi
echo "gpu tests: $summary (rc $rc_tests)"

timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUTDIR" --pytest-summary "$summary (rc $rc_tests)" \
    2>&1 | tee "$OUTDIR/gpu_check_log.txt"
rc_bench=${PIPESTATUS[0]}

echo "gpu_check: tests rc $rc_tests, benchmark rc $rc_bench, $(( $(date +%s) - start )) s; results in $OUTDIR"
[ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ]
