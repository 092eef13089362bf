#!/usr/bin/env bash
# Every GPU figure and check docs/performance.md and docs/scaling.md mark unmeasured, in one run on one NVIDIA GPU (about
# 8 minutes on an H100; nothing is downloaded): the attention kernels against XLA (numbers and
# speed), the train step's MFU, the Whisper-large-v3 encoder and Qwen2-0.5B against
# transformers. Each step's output goes to $OUT/NAME.txt (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
status=0
run() {
  local name=$1
  shift
  echo "=== $name: $*"
  timeout 300 "$PY" "$@" --json 2>&1 | grep -v "^[WI][0-9]\{4\} " | tee "$OUT/$name.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "=== $name FAILED"; status=1; }
}
run attention experiments/check_attention_kernels.py
run train experiments/bench_train.py
run whisper experiments/bench_audio.py --large --dtype bfloat16 --batch 8 --clips 0
run qwen2 experiments/bench_qwen2.py --dtype bfloat16
exit $status
