#!/usr/bin/env bash
# The test suite: sets up .venv (and Fashion-MNIST for the mini-VTAB tests) if needed, then runs pytest offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_data.sh
export HF_HUB_OFFLINE=1
# the quality check first: ruff (configured in pyproject.toml) over the package, tests, benchmarks and scripts
.venv/bin/ruff check --quiet src tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
