#!/usr/bin/env bash
# One device call (issue 21, item 3): trains the proxy model on the GPU for PROXY_SECONDS of training
# (tools/train_proxy.py, deterministic, time-bounded), then scores its caption-following over all 32
# captions of its task with the quality harness (`stdit-engine quality --model proxy`).
# What comes back in $OUT (7 files): proxy_stdit.pt (the checkpoint), proxy_stdit.resume.pt and
# proxy_stdit.optim.pt (what a later call resumes from), train_proxy.json (steps, loss curve,
# seconds, card), quality.csv and quality.json (caption accuracy per sampler), proxy_gpu.log.
#
#   bash tools/proxy_gpu.sh                      # on the device, repo root, $OUT set
#   PROXY_WORK=dir bash tools/proxy_gpu.sh       # resume: dir holds the three .pt files of a cut run
#   OUT=/tmp/o PROXY_DEVICE=cpu PROXY_SECONDS=2 PROXY_TRAIN_ARGS="--hidden 32 --depth 1 --heads 1 --batch-size 1" \
#     PROXY_SEEDS=0 PROXY_EVAL_CONFIGS=dpm-solver++@2 PROXY_REFERENCE=ddim@2 bash tools/proxy_gpu.sh  # CPU rehearsal
# The architecture and batch are train_proxy.py's defaults (quality/proxy.py's PROXY_PRESET) unless
# PROXY_TRAIN_ARGS says otherwise; a resumed run needs the settings it was started with.
set -euo pipefail
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${PROXY_DEVICE:-cuda}
WORK=${PROXY_WORK:-/tmp/proxy-train}
LOG="$OUT/proxy_gpu.log"
mkdir -p "$OUT" "$WORK"
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG"
fi

# shellcheck disable=SC2086  # PROXY_TRAIN_ARGS is a list of arguments
python3 tools/train_proxy.py --device "$DEVICE" --steps "${PROXY_STEPS:-100000}" --max-seconds "${PROXY_SECONDS:-400}" \
  ${PROXY_TRAIN_ARGS:-} --out "$WORK/proxy_stdit.pt" --copy-to "$OUT" 2>&1 | tee -a "$LOG"

# Every caption of the task as a prompt, so the harness scores colour, direction and speed of each.
prompts=()
while IFS= read -r caption; do
  prompts+=(--prompt "$caption")
done < <(python3 -c "from stdit_engine.quality.proxy_task import CAPTIONS; print('\n'.join(c.text for c in CAPTIONS))")
CFG=${PROXY_CFG:-7.0}
SEEDS=${PROXY_SEEDS:-0,1}
python3 -m stdit_engine quality --model proxy --stdit "$WORK/proxy_stdit.pt" --device "$DEVICE" --dtype fp32 \
  "${prompts[@]}" --seeds "$SEEDS" --configs "${PROXY_EVAL_CONFIGS:-dpm-solver++@15,iddpm@100}" \
  --reference "${PROXY_REFERENCE:-ddim@50}" --cfg-scale "$CFG" --no-decode --out "$WORK/quality" 2>&1 | tee -a "$LOG"
cp "$WORK/quality/quality.csv" "$OUT/quality.csv"
python3 - "$WORK/quality/quality.csv" "$OUT/quality.json" "$CFG" "$SEEDS" <<'EOF'
import csv, json, sys
source, target, cfg, seeds = sys.argv[1:]
def value(text):
    try:
        return float(text)
    except ValueError:
        return {"True": True, "False": False}.get(text, text)
with open(source) as f:
    rows = [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]
json.dump({"captions": 32, "seeds": seeds, "cfg_scale": float(cfg), "dtype": "fp32", "rows": rows},
          open(target, "w"), indent=1)
EOF
echo "wrote $OUT/quality.json" | tee -a "$LOG"
