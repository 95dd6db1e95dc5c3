"""What each stage of `generate()` allocates at its peak, per placement and preset, against
`estimate_memory`: the first call (compilation, the step's eager warm-up and capture) and warm calls
(new prompts, then the same prompts cached), what stays allocated between calls by memory pool (a
captured step's pool is reserved, not allocated), and the decode's peak at a few chunk sizes (its
slope per frame and its intercept). Random weights, 2-step calls (the peaks do not depend on the
number of steps). Writes $OUT/stage_peaks.json.

    python benchmarks/probes/lean_stage_peaks.py [PRESET-PLACEMENT ...]   (default: every run of RUNS)
"""
from __future__ import annotations

import gc
import json
import os
import sys
from collections import defaultdict

import torch

from stdit_engine import Engine
from stdit_engine.engine.memory import GIB, estimate_memory

RUNS = [  # preset, placement, prompts, decode chunks to try
    ("16x256x256", "lean", 2, (1, 8)), ("16x512x512", "lean", 2, (1, 2)), ("64x512x512", "lean", 1, (1,)),
    ("16x512x512", "sequential", 2, ()), ("16x256x256", "resident", 2, (1, 8)),
    ("16x256x256", "sequential", 2, ()), ("64x512x512", "sequential", 1, ()),
    ("16x256x256", "offload", 2, ()), ("16x512x512", "offload", 2, ()), ("64x512x512", "offload", 1, ()),
    ("16x512x512", "resident", 2, ()), ("64x512x512", "resident", 1, ()),
]
_calls = iter(range(10**6))


def new_prompts(n: int) -> list[str]:
    call = next(_calls)
    return [f"a sea turtle swimming over a coral reef, take {call}-{i}" for i in range(n)]


def stage_peaks(engine: Engine) -> dict:
    """Each stage's [allocated, reserved] peak, GiB."""
    return {s.name: [round(s.peak_allocated / GIB, 4), round(s.peak_reserved / GIB, 4)] for s in engine.last_stats}


def pools() -> dict:
    """[allocated, reserved] GiB by memory pool (the default pool is (0, 0); a captured graph has its own)."""
    by_pool = defaultdict(lambda: [0, 0])
    for segment in torch.cuda.memory_snapshot():
        pool = by_pool[str(segment.get("segment_pool_id"))]
        pool[0] += segment["allocated_size"]
        pool[1] += segment["total_size"]
    return {name: [round(a / GIB, 4), round(t / GIB, 4)] for name, (a, t) in by_pool.items()}


def probe(preset: str, placement: str, n: int, chunks) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    engine = Engine.from_random_weights(preset, device="cuda", placement=placement, warmup=False)  # "first" captures
    record = {"after_load_allocated": torch.cuda.memory_allocated() / GIB}
    engine.generate(new_prompts(n), seed=0, num_steps=2, progress=False)
    record["first"] = stage_peaks(engine)
    record["between_calls_allocated"] = torch.cuda.memory_allocated() / GIB
    record["between_calls_pools"] = pools()
    prompts = new_prompts(n)
    engine.generate(prompts, seed=0, num_steps=2, progress=False)
    record["warm_new"] = stage_peaks(engine)
    engine.generate(prompts, seed=0, num_steps=2, progress=False)
    record["warm_cached"] = stage_peaks(engine)
    record["chunk"] = engine.decode_chunk_frames(n)
    for chunk in chunks:
        engine.generate(prompts, seed=0, num_steps=2, progress=False, vae_chunk_frames=chunk)
        record[f"decode_chunk_{chunk}"] = stage_peaks(engine)["decode"]
    estimate = estimate_memory(preset, n, engine.placement.mode, engine.dtype, engine.text_encoder.dtype,
                               vae_chunk_frames=record["chunk"], backend=engine.stdit.ops.name)
    record["estimate"] = estimate.describe()
    return record


def main() -> None:
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    results = {}
    chosen = sys.argv[1:]
    for preset, placement, n, chunks in RUNS:
        if chosen and f"{preset}-{placement}" not in chosen:
            continue
        results[f"{preset}-{placement}"] = record = probe(preset, placement, n, chunks)
        print(preset, placement, json.dumps(record), flush=True)
        with open(f"{out}/stage_peaks.json", "w") as f:  # after each run: a call cut short keeps what finished
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
