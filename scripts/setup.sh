#!/usr/bin/env bash
# Idempotent set-up: Debian's Fashion-MNIST package, a virtualenv in .venv with the pinned stack,
# and the project installed in editable mode. Re-running it does nothing when all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.setup-stamp"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "[setup] installing Python packages (first time only)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps --config-settings editable_mode=compat -e .
  echo "$want" > "$stamp"
fi
