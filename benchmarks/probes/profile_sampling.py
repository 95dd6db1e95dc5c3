"""Where a sampling step's time goes beyond the STDiT forward: one resident `generate()` of 20 steps
under the profiler; prints the denoise stage's wall time per step, the GPU kernel time per step
(all kernels of the call, by kind, divided by the steps), and the costliest kernels by name.

    python -m benchmarks.probes.profile_sampling [--preset 16x256x256] [--dtype bf16|fp16] [--steps 20]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from benchmarks.workloads import kernel_time_ms

from stdit_engine import Engine
from stdit_engine.bench import PROMPTS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="16x256x256")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    engine = Engine.from_random_weights(args.preset, device="cuda", dtype=DTYPES[args.dtype], placement="resident")
    engine.generate(PROMPTS, seed=42, num_steps=2, progress=False)  # capture the graph, pick the kernels
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(PROMPTS, seed=42, num_steps=args.steps, progress=False)
    stages = {s.name: s.seconds for s in engine.last_stats}
    by_kind, by_kernel = kernel_time_ms(prof, per=args.steps)
    print(f"{args.preset} {args.dtype}, {args.steps} steps: stages {stages}")
    print(f"denoise wall per step {stages['denoise'] / args.steps * 1e3:.2f} ms; GPU kernel time of the whole call "
          f"per step {sum(by_kind.values()):.2f} ms (encode and decode included)")
    for kind, ms in by_kind.items():
        print(f"  {kind}: {ms:.3f} ms per step")
    for name, (ms, calls) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"  {ms * args.steps:9.2f} ms  {calls:6d} calls  {name[:110]}")


if __name__ == "__main__":
    main()
