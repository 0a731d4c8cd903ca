#!/usr/bin/env bash
# The README's test command: set up (idempotent), then the default (fast) test run.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [[ $# -eq 0 ]]; then set -- -m "not slow"; fi
# Two test processes (PYTEST_WORKERS to change it; 0: one process), each test file in one of them
# so that its module fixtures (whole training runs) are made once.
workers=${PYTEST_WORKERS:-2}
if [[ $workers != 0 ]]; then set -- -n "$workers" --dist loadfile "$@"; fi
exec .venv/bin/python -m pytest -q "$@"
