#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs the offline demo (shipped backbone, digits).
# Extra arguments go to `heartlora demo` (e.g. --epochs 5 --out runs/demo2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/heartlora demo "$@"
