#!/usr/bin/env bash
# Issue 20's measurements (most of one device call): the default placement against resident per
# preset (test_lean.py) and the cold start (test_cold_start.py). One pytest run per part, cheapest
# first, each with its own JSON under $OUT, so that a call cut short keeps what finished; each part
# starts only with more than a minute left before DEADLINE_S (seconds since this script started).
# Then $OUT/BENCHMARKS.md with issue 20's table regenerated from the JSONs (report.py --lean-into).
# Usage (device tool, carry .whl): bash benchmarks/lean_check.sh; gpu_check.sh runs it last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
DEADLINE_S=${DEADLINE_S:-580}
mkdir -p "$OUT"
if [ -z "${PYTHONPATH:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
status=0
for part in 16x256x256 cold_start 16x512x512 64x512x512; do
  left=$((DEADLINE_S - SECONDS))
  if [ "$left" -lt 60 ]; then
    echo "lean_check: $left s left, not starting $part"
    status=1
    continue
  fi
  timeout "$left" python3 -m pytest -q benchmarks/test_lean.py benchmarks/test_cold_start.py -p no:cacheprovider \
    -k "$part" --benchmark-json="$OUT/lean-$part.json" --benchmark-columns=median,rounds 2>&1 \
    | tee "$OUT/lean-$part.log" | tail -n 4 || status=1
  [ -f "$OUT/lean-$part.json" ] && python3 benchmarks/report.py "$OUT/lean-$part.json" | tee -a "$OUT/lean_table.md"
done
# BENCHMARKS.md (gpu_check.sh's, with its headline, if it wrote one) with issue 20's table made from
# the presets that finished (to copy into the repository with their JSONs: BENCHMARKS.md says how).
tables=()
for part in 16x256x256 16x512x512 64x512x512; do
  [ -s "$OUT/lean-$part.json" ] && tables+=("$OUT/lean-$part.json")
done
if [ ${#tables[@]} -gt 0 ]; then
  [ -f "$OUT/BENCHMARKS.md" ] || cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
  python3 benchmarks/report.py "${tables[@]}" --lean-into "$OUT/BENCHMARKS.md" || status=1
fi
exit $status
