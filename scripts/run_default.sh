#!/usr/bin/env bash
# The default run: set up (idempotent), then OptG on Fashion-MNIST at 95% sparsity.
#   bash scripts/run_default.sh                       # workdir runs/fashion_mnist
#   WORKDIR=/tmp/fm bash scripts/run_default.sh --config.num_epochs=4
# Extra arguments go to train.py. Rerunning resumes an interrupted run, and prints the results of
# a finished one without training again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python train.py --config=configs/fashion_mnist.py \
  --workdir="${WORKDIR:-runs/fashion_mnist}" "$@"
