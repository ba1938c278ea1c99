#!/usr/bin/env bash
# The full PTB experiment: train configs/ptb.yaml and configs/ptb_transformer.yaml from scratch,
# evaluate both on PTB test with K = 500 importance samples (bf16 autocast: ~27 min per model on
# 2 CPU cores), and write the numbers (no weights) to scripts/results/ptb.json, which the README's
# results table is taken from.
# Usage: scripts/reproduce_ptb.sh [extra train flags, e.g. --trainer.max_epochs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get_data.sh 2>/dev/null || true  # offline copy if there is one; textvae downloads PTB otherwise
results=scripts/results/ptb.json
entries=()
for name in ptb ptb_transformer; do
  start=$(date +%s)
  textvae train --config "configs/${name}.yaml" --output_dir "runs/${name}" --overwrite "$@"
  train_seconds=$(( $(date +%s) - start ))
  start=$(date +%s)
  metrics=$(textvae evaluate --model "runs/${name}" --split test --iw-samples 500 --precision bf16 --json)
  eval_seconds=$(( $(date +%s) - start ))
  echo "${name}: trained in ${train_seconds}s, evaluated in ${eval_seconds}s" >&2
  entries+=("$(python3 - "$name" "$train_seconds" "$eval_seconds" "$metrics" "$*" <<'PY'
import json, sys, platform, os
name, train_s, eval_s, metrics, flags = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(json.dumps({"config": f"configs/{name}.yaml", "extra_flags": flags, "train_seconds": int(train_s),
                  "eval_seconds": int(eval_s), "hardware": f"{cpu}, {os.cpu_count()} cores, no GPU",
                  "test": json.loads(metrics)}))
PY
)")
done
printf '[%s]\n' "$(IFS=,; echo "${entries[*]}")" | python3 -m json.tool > "${results}"
echo "wrote ${results}" >&2
