#!/usr/bin/env bash
# GPU check: gmm_faithful, lda_news, vae_mnist and fhmm_chorales run with `vizoo run NAME --set device=cuda` and
# short SVI budgets; wall time and every method's ELBO go to benchmarks/results/gpu_check.json
# (benchmarks/gpu_check.py says what is recorded). Without a CUDA device: one line, exit 0, nothing run.
#   benchmarks/gpu_check.sh                      # about 5 minutes on one GPU
#   benchmarks/gpu_check.sh --devices cuda cpu   # and the same runs on the CPU, for comparison
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device torch can use on this machine: nothing run"
    exit 0
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
