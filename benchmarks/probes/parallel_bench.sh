#!/usr/bin/env bash
# One GPU, then N GPUs (cfg and dsp), same workload, in one call; then the speed-ups.
#   NPROC=2 benchmarks/probes/parallel_bench.sh --preset 64x512x512 --steps 20 [--decode]
# JSON lines go to stdout and to ${RESULTS:-parallel_bench.jsonl}; final latents (without --decode) to
# ${LATENTS:-parallel_bench_latents}/, for the summary's agreement check.
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC=${NPROC:-2}
RESULTS=${RESULTS:-parallel_bench.jsonl}
PYTHON=${PYTHON:-python}
LATENTS=${LATENTS:-parallel_bench_latents}
: > "$RESULTS"
CUDA_VISIBLE_DEVICES=0 "$PYTHON" -m benchmarks.probes.parallel_bench --latents "$LATENTS" "$@" | tee -a "$RESULTS"
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m benchmarks.probes.parallel_bench \
    --mode cfg --mode dsp --latents "$LATENTS" "$@" | tee -a "$RESULTS"
"$PYTHON" -m benchmarks.probes.parallel_bench --summary "$RESULTS"
