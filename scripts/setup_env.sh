#!/usr/bin/env bash
# Creates ./.venv (if needed) and installs heartlora with its pinned dependencies.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.heartlora-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing heartlora and its dependencies into .venv (first time: a few minutes)" >&2
  # torch/torchvision are pinned in pyproject.toml; pip installs them before the rest.
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install --quiet -e ".[test,demo]"
  echo "$want" > "$stamp"
fi
