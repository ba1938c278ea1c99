#!/usr/bin/env bash
# The full PTB experiment: train each config from scratch, evaluate it on PTB valid and test with
# K = 500 importance samples (bf16 autocast), and write the numbers (no weights), the commands that
# made them, the commit and the hardware to docs/results/ptb.json; `python scripts/results_tables.py`
# then regenerates the tables of README.md and docs/ from it.
#
# Usage: scripts/reproduce_ptb.sh [extra train flags, e.g. --trainer.max_epochs 3]
#   CONFIGS="ptb ptb_lowrate ptb_transformer ptb_transformer_lowrate"
#                                   the configs to run (the default); entries of the same name in the
#                                   results file are replaced and the others kept; NAME=CONFIG runs
#                                   configs/CONFIG.yaml under the name NAME
#   RATES="5 15 30 50"              instead: the rate sweep (the Pareto table), configs/ptb_lowrate.yaml
#                                   with --kl.target_rate R --kl.free_bits 0 for each R, as entries
#                                   named ptb_rate_R
#   IW_SAMPLES=500                  K of the evaluations (500 for reported numbers)
#   VALID=eval                      evaluate valid at K too; VALID=train takes valid from the run's
#                                   metrics.json (K = eval.iw_samples of training) and saves the time
#   EVAL_ONLY=1 RUNS=dir            evaluate the runs already in dir/NAME instead of training them
#                                   (train_seconds: from run.json to metrics.json)
# Valid figures are for choosing between runs; test figures are only quoted for the final table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get_data.sh 2>/dev/null || true  # offline copy if there is one; textvae downloads PTB otherwise
results=docs/results/ptb.json
runs=${RUNS:-runs}
iw=${IW_SAMPLES:-500}

run() {  # run NAME CONFIG [train flags...]
  local name=$1 config=$2
  shift 2
  local start train_seconds eval_seconds valid test dir="${runs}/${name}"
  if [ -n "${EVAL_ONLY:-}" ]; then
    train_seconds=$(( $(stat -c %Y "${dir}/metrics.json") - $(stat -c %Y "${dir}/run.json") ))
  else
    start=$(date +%s)
    textvae train --config "${config}" --output_dir "${dir}" --overwrite "$@"
    train_seconds=$(( $(date +%s) - start ))
  fi
  start=$(date +%s)
  if [ "${VALID:-eval}" = train ]; then
    valid=$(python3 -c 'import json, sys; m = json.load(open(sys.argv[1]))
print(json.dumps({**m["valid"], "split": "valid", "iw_samples": m["iw_samples"], "precision": "32"}))' "${dir}/metrics.json")
  else
    valid=$(textvae evaluate --model "${dir}" --split valid --iw-samples "${iw}" --precision bf16 --json)
  fi
  test=$(textvae evaluate --model "${dir}" --split test --iw-samples "${iw}" --precision bf16 --json)
  eval_seconds=$(( $(date +%s) - start ))
  echo "${name}: trained in ${train_seconds}s, evaluated in ${eval_seconds}s" >&2
  python3 - "$results" "$name" "$config" "$train_seconds" "$eval_seconds" "$valid" "$test" "$*" "$runs" "$iw" \
    "${VALID:-eval}" <<'PY'
import json, os, platform, subprocess, sys
from pathlib import Path
results, name, config, train_s, eval_s, valid, test, flags, runs, iw, valid_from = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.machine())
gpu = "no GPU"
if json.loads(test).get("device", "cpu").startswith("cuda"):
    import torch
    gpu = torch.cuda.get_device_name()
run = f"{runs}/{name}"
evaluate = f"textvae evaluate --model {run} --split {{}} --iw-samples {iw} --precision bf16 --json"
command = " ".join(part for part in ("textvae train --config", config, flags, "--output_dir", run) if part)
splits = ["test"] if valid_from == "train" else ["valid", "test"]
command += "".join(f" && {evaluate.format(split)}" for split in splits)
git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
# The code's commit, and whether it had uncommitted changes (the results being written do not count).
dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results")
entry = {"name": name, "config": config, "extra_flags": flags, "command": command,
         "commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(dirty),
         "hardware": f"{cpu}, {os.cpu_count()} cores, {gpu}", "train_seconds": int(train_s),
         "eval_seconds": int(eval_s), "valid": json.loads(valid), "test": json.loads(test)}
path = Path(results)
entries = json.loads(path.read_text()) if path.exists() else []
entries = [e for e in entries if e.get("name", Path(e["config"]).stem) != name] + [entry]
entries.sort(key=lambda e: e.get("name", Path(e["config"]).stem))
path.write_text(json.dumps(entries, indent=2) + "\n")
PY
}

if [ -n "${RATES:-}" ]; then
  for rate in ${RATES}; do
    run "ptb_rate_${rate}" configs/ptb_lowrate.yaml --kl.target_rate "${rate}" --kl.free_bits 0 "$@"
  done
else
  # NAME, or NAME=CONFIG to file configs/CONFIG.yaml as NAME
  for item in ${CONFIGS:-ptb ptb_lowrate ptb_transformer ptb_transformer_lowrate}; do
    run "${item%%=*}" "configs/${item#*=}.yaml" "$@"
  done
fi
echo "wrote ${results}" >&2
