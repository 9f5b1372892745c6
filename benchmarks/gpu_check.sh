#!/usr/bin/env bash
# The GPU check: one script, at most ~8 minutes on one GPU, that measures what the README's GPU
# table reports. Every figure is a paired ratio from one run (configurations interleaved in one
# process), never an absolute timing compared across runs.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu_check
#   SMOKE=1 bash benchmarks/gpu_check.sh /tmp/gc    # tiny settings, any device (checks the script runs)
#
# 1. ViT-B/16, 224 px, bf16 autocast, batch 64: training-step ratios of heart-lora and bilora
#    1-bit against PEFT's LoRA and the floor, without and with torch.compile (step_time.py);
#    merged Heart-LoRA inference against the plain backbone (same script).
# 2. Many tasks on one backbone: a mixed batch of T = 1, 2, 4, 8 tasks against merged models and
#    PEFT's mixed batch (multitask.py).
# 3. One VTAB-format task end to end: 3 epochs on a synthetic 1,000-image task at 224 px, images/s
#    of the data path and of the step, cached and uncached (task_time.py).
# Results: OUT_DIR/*.json and OUT_DIR/summary.txt (the printed tables).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export HF_HUB_OFFLINE=1
LOG="$OUT/summary.txt"
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }

if [ "${SMOKE:-0}" = "1" ]; then
  MODEL=vit_tiny_32; BATCH=4; REPEATS=2; MAXREP=2; TASKS=1,2; MT_MODEL=vit_tiny_32; MT_BATCH=8
  CONFIGS="heart-lora ne=1,heart-lora scoring,bilora 1-bit,peft-lora"
  TT="--train 32 --test 32 --epochs 1 --image-size 32 --model-size tiny"
else
  MODEL=vit_base; BATCH=64; REPEATS=10; MAXREP=30; TASKS=1,2,4,8; MT_MODEL=vit_base; MT_BATCH=64
  CONFIGS="heart-lora ne=4,heart-lora scoring,bilora 1-bit,peft-lora"
  TT="--train 1000 --test 2000 --epochs 3 --image-size 224 --model-size base"
fi

say "# heartlora GPU check — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$PY" - <<'EOF' | tee -a "$LOG"
import torch
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)",
      "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF

say "## 1. training step, bf16 autocast (no compile)"
"$PY" benchmarks/step_time.py --models "$MODEL" --batch "$BATCH" --repeats "$REPEATS" --max-repeats "$MAXREP" \
  --target-ci 0.01 --precision bf16 --no-ablation --configs "$CONFIGS" --json "$OUT/step_time.json" 2>&1 | tee -a "$LOG"

say "## 1b. training step, bf16 autocast, torch.compile"
"$PY" benchmarks/step_time.py --models "$MODEL" --batch "$BATCH" --repeats "$REPEATS" --precision bf16 --no-ablation \
  --configs "$CONFIGS" --compile --json "$OUT/step_time_compiled.json" 2>&1 | tee -a "$LOG"

say "## 2. many tasks on one backbone"
"$PY" benchmarks/multitask.py --model "$MT_MODEL" --batch "$MT_BATCH" --tasks "$TASKS" --repeats "$REPEATS" --amp \
  --clients 0 --json "$OUT/multitask.json" 2>&1 | tee -a "$LOG"

say "## 3. one VTAB-format task end to end"
# shellcheck disable=SC2086
"$PY" benchmarks/task_time.py $TT --json "$OUT/task_time.json" 2>&1 | tee -a "$LOG"

say "wrote $OUT/summary.txt and the JSON files beside it"
