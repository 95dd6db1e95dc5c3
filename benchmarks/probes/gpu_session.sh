#!/usr/bin/env bash
# The 2-GPU call of a session (device tool, kind nvidia-h200-x2, carry .whl): one GPU vs two for
# the parallel modes, then the same under the profiler (each rank's kernel time per step by kind,
# NCCL apart: where a cfg step's time beyond half the one-GPU step goes), then the NCCL parity
# test. Results and logs under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
PYTHON=python3 RESULTS=$OUT/parallel_bench.jsonl LATENTS=/tmp/latents NPROC=2 timeout 260 \
  bash benchmarks/probes/parallel_bench.sh --preset 64x512x512 --steps 20 > "$OUT/parallel.log" 2>&1
grep -E "GPUs:|Error" "$OUT/parallel.log"
(CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m benchmarks.probes.parallel_bench --preset 64x512x512 --steps 5 --profile
 timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m benchmarks.probes.parallel_bench \
   --preset 64x512x512 --steps 5 --mode cfg --profile) > "$OUT/profile.jsonl" 2> "$OUT/profile.log"
python3 -c "
import json, sys
for line in open('$OUT/profile.jsonl'):
    if line.startswith('{'):
        r = json.loads(line)
        print(r['mode'], r['world_size'], 'GPU(s): step', round(r['step_ms_median'], 1), 'ms (profiled); kernel ms per step per rank:', r['kernel_ms_per_step'])
"
timeout 90 python3 -m pytest -q -m gpu tests/test_parallel_gpu.py -p no:cacheprovider 2>&1 | tail -2
