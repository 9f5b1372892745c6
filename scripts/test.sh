#!/usr/bin/env bash
# The test suite: sets up .venv (and Fashion-MNIST for the mini-VTAB tests) if needed, then runs pytest offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_data.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
