#!/usr/bin/env bash
# The 2-GPU call of a session (device tool, kind nvidia-h200-x2, carry .whl): one GPU vs two for
# the parallel modes and the NCCL parity test, then, on separate GPUs at once, the export suite
# (GPU 1) and the forward breakdown + end-to-end runs (GPU 0). Results and logs under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
PYTHON=python3 RESULTS=$OUT/parallel_bench.jsonl LATENTS=/tmp/latents NPROC=2 timeout 260 \
  bash benchmarks/parallel_bench.sh --preset 64x512x512 --steps 20 > "$OUT/parallel.log" 2>&1
grep -E "GPUs:|Error" "$OUT/parallel.log"
timeout 90 python3 -m pytest -q -m gpu tests/test_parallel_gpu.py -p no:cacheprovider 2>&1 | tail -2
(CUDA_VISIBLE_DEVICES=1 timeout 120 python3 -m pytest -q -m gpu tests/test_gpu_export.py -p no:cacheprovider
 CUDA_VISIBLE_DEVICES=1 timeout 200 python3 -m pytest -q benchmarks/test_export.py -k "onnx or fp16" \
   -p no:cacheprovider --benchmark-json="$OUT/export.json") > "$OUT/export.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 timeout 300 python3 -m pytest -q benchmarks/test_forward_breakdown.py benchmarks/test_end_to_end.py \
  -k "breakdown or 16x256x256" -p no:cacheprovider --benchmark-json="$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
wait
grep -E "passed|failed|Error" "$OUT/export.log" "$OUT/e2e.log" | tail -8
for f in export e2e; do [ -s "$OUT/$f.json" ] && python3 benchmarks/report.py "$OUT/$f.json"; done
