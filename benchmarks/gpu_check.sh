#!/usr/bin/env bash
# One call on the GPU machine: install the carried wheels, run the GPU tests, run the benchmarks,
# print the table. Usage (device tool, carry .whl): [SKIP_GPU_TESTS=1] bash benchmarks/gpu_check.sh [pytest -k filter]
# [SKIP_LEAN=1] leaves out issue 20's part (benchmarks/lean_check.sh, most of a device call: runs last, within DEADLINE_S=580 s).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m stdit_engine info
status=0
if [ -z "${SKIP_GPU_TESTS:-}" ]; then
  # Every gpu-marked test (the kernels at full size among them); the export tests in a process of
  # their own: loading a CUDA AOTInductor package has crashed the process on torch 2.11.
  # Only the files with gpu tests, so the run stays within one device call.
  gpu_files=$(grep -l "mark.gpu" tests/test_*.py | grep -v test_gpu_export.py)
  python3 -m pytest -q -m gpu $gpu_files -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -n 25 || status=1
  python3 -m pytest -q -m gpu tests/test_gpu_export.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_export_tests.log" \
    | tail -n 5 || status=1
fi
# Issue 20's lean table and cold start run apart, last (lean_check.sh), unless SKIP_LEAN is set.
python3 -m pytest -q benchmarks/ -p no:cacheprovider ${1:+-k "$1"} --benchmark-json="$OUT/bench.json" \
  --ignore=benchmarks/test_lean.py --ignore=benchmarks/test_cold_start.py \
  --benchmark-columns=median,rounds 2>&1 | tee "$OUT/bench.log" | tail -n 15 || status=1
[ -f "$OUT/bench.json" ] && python3 benchmarks/report.py "$OUT/bench.json" --png "$OUT/chart.png" | tee "$OUT/table.md"
# BENCHMARKS.md with its headline from this run (to copy into the repository with bench.json: BENCHMARKS.md says how).
[ -f "$OUT/bench.json" ] && cp BENCHMARKS.md "$OUT/BENCHMARKS.md" \
  && python3 benchmarks/report.py "$OUT/bench.json" --headline-into "$OUT/BENCHMARKS.md"
if [ -z "${SKIP_LEAN:-}" ]; then
  DEADLINE_S=$((${DEADLINE_S:-580} - SECONDS)) bash benchmarks/lean_check.sh || status=1
fi
exit $status
