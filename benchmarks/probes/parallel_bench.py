"""One GPU against N: time per denoising step, end-to-end time and peak VRAM per rank, random weights.

    python -m benchmarks.probes.parallel_bench --preset 64x512x512 --steps 20                  # one GPU
    torchrun --standalone --nproc_per_node 2 -m benchmarks.probes.parallel_bench --preset 64x512x512 \
        --steps 20 --mode cfg --mode dsp                                                # N GPUs
    python -m benchmarks.probes.parallel_bench --summary results.jsonl                         # speed-ups

benchmarks/probes/parallel_bench.sh runs the three in one go. Each configuration prints one JSON line (rank 0):
the median step time (host clock between the steps a timed generate() reports completed, after a
2-step warm-up call), the end-to-end seconds of that call (encode, denoise, and decode with --decode), and per
rank the peak allocated / reserved GiB of both calls and the GiB held by the weights before them.
Every mode runs its steps from CUDA graphs (collectives included), as the engine does by default.
With --profile the timed call runs under the profiler and each record also carries every rank's
GPU kernel time per step by kind (NCCL apart), to tell compute from exchange and waiting; the
profiler slows the steps, so their times are then not the figures to quote.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from benchmarks.workloads import kernel_time_ms, relative_error
from stdit_engine import Engine
from stdit_engine.engine.memory import GIB
from stdit_engine.parallel.launch import torchrun_group

PROMPT = "a sea turtle swimming over a coral reef"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class StepTimer:
    """A `progress` callback: the host clock at each denoising step the engine reports completed.
    The engine waits on each step's event while the host runs ahead of the device, so a report
    follows its step's completion closely, and the intervals between reports are the step times."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, done: int, total: int) -> None:
        self.times.append(time.perf_counter())

    def step_ms(self) -> list[float]:
        return [1000 * (b - a) for a, b in zip(self.times, self.times[1:])]


def measure(mode: str, args: argparse.Namespace) -> dict:
    parallel, cuda = dist.is_initialized(), args.device == "cuda"
    engine = Engine.from_random_weights(args.preset, parallel=mode, device=args.device, dtype=DTYPES[args.dtype],
                                        t5_dtype=DTYPES[args.t5_dtype], placement="resident", seed=0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    output = "video" if args.decode else "latent"
    # The peaks span the warm-up call too: with CUDA graphs, that is when the activations are
    # allocated (the graph's memory pool), which the timed call then reuses. generate() resets the
    # allocator's peak at each stage, so the peaks are read from the stage records of both calls.
    weights = torch.cuda.memory_allocated() if cuda else 0
    engine.generate([PROMPT], seed=42, num_steps=2, output=output, progress=False)  # warm-up, graph capture
    stages = list(engine.last_stats)
    sync()
    if parallel:
        dist.barrier()
    timer = StepTimer()
    start = time.perf_counter()
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU  # CPU: the dry run has no kernels
    with profile(activities=[activity]) if args.profile else contextlib.nullcontext() as prof:
        result = engine.generate([PROMPT], seed=42, num_steps=args.steps, output=output, progress=timer)
        sync()
    end_to_end = time.perf_counter() - start
    stages += engine.last_stats
    mine = dict(peak_allocated_gib=max(s.peak_allocated for s in stages) / GIB if cuda else 0.0,
                peak_reserved_gib=max(s.peak_reserved for s in stages) / GIB if cuda else 0.0,
                weights_gib=weights / GIB, step_ms=timer.step_ms(),
                # GPU kernel ms per step by kind (encode and decode included), NCCL apart
                kernel_ms_per_step={kind: round(ms, 2) for kind, ms in kernel_time_ms(prof, per=args.steps)[0].items()}
                if args.profile else None)
    ranks = [mine]
    if parallel:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    step_ms = ranks[0]["step_ms"]  # rank 0 times the steps (the others' loops wait on the same exchange)
    record = dict(
        preset=args.preset, mode=engine.parallel.mode if engine.parallel else "none",
        world_size=dist.get_world_size() if parallel else 1, steps=args.steps, prompts=1,
        decode=args.decode, dtype=args.dtype, t5_dtype=args.t5_dtype,
        cuda_graphs=engine.denoiser.use_cuda_graphs and cuda,
        step_ms_median=statistics.median(step_ms), step_ms_min=min(step_ms), end_to_end_s=end_to_end,
        stage_seconds={s.name: round(s.seconds, 3) for s in engine.last_stats},
        peak_allocated_gib=[round(r["peak_allocated_gib"], 2) for r in ranks],
        peak_reserved_gib=[round(r["peak_reserved_gib"], 2) for r in ranks],
        weights_gib=[round(r["weights_gib"], 2) for r in ranks],
        device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, latent_file=None,
        kernel_ms_per_step=[r["kernel_ms_per_step"] for r in ranks],
    )
    if args.latents and output == "latent" and (not parallel or dist.get_rank() == 0):
        # Every rank holds the same latent; the summary compares it with the one-GPU run's.
        args.latents.mkdir(parents=True, exist_ok=True)
        record["latent_file"] = str(args.latents / f"{record['mode']}-{record['world_size']}.pt")
        torch.save(result.float().cpu(), record["latent_file"])
    del engine
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def summarise(path: Path) -> None:
    """Speed-ups of each parallel record over the one-GPU record of the same preset."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    base = {r["preset"]: r for r in records if r["world_size"] == 1}
    for r in records:
        one = base.get(r["preset"])
        if r["world_size"] == 1 or one is None:
            continue
        activation = [p - w for p, w in zip(r["peak_allocated_gib"], r["weights_gib"])]
        agreement = ""
        if r["latent_file"] and one["latent_file"]:
            mine, reference = torch.load(r["latent_file"]), torch.load(one["latent_file"])
            error = relative_error(mine, reference)
            agreement = f"; final latent relative error vs one GPU {error:.2e}"
        one_activation = one["peak_allocated_gib"][0] - one["weights_gib"][0]
        print(f"{r['preset']} {r['mode']} on {r['world_size']} GPUs: step {r['step_ms_median']:.1f} ms vs "
              f"{one['step_ms_median']:.1f} ms ({one['step_ms_median'] / r['step_ms_median']:.2f}x), end to end "
              f"{r['end_to_end_s']:.1f} s vs {one['end_to_end_s']:.1f} s "
              f"({one['end_to_end_s'] / r['end_to_end_s']:.2f}x); peak allocated per GPU {r['peak_allocated_gib']} "
              f"GiB vs {one['peak_allocated_gib'][0]} GiB, above the weights {[round(a, 2) for a in activation]} "
              f"GiB vs {one_activation:.2f} GiB{agreement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x512x512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", action="append", help="under torchrun: cfg, dsp, cfg+dsp, auto (repeatable)")
    parser.add_argument("--decode", action="store_true", help="include the VAE decode (output videos)")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--t5-dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--profile", action="store_true", help="GPU kernel time per step by kind, per rank")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    parser.add_argument("--latents", type=Path, help="save each run's final latent here (without --decode), "
                        "so that --summary can compare the parallel runs with the one-GPU run")
    parser.add_argument("--summary", type=Path, help="print the speed-ups in a file of these JSON lines, and exit")
    args = parser.parse_args()
    if args.summary:
        summarise(args.summary)
        return
    with torchrun_group(args.device):
        modes = (args.mode or ["auto"]) if dist.is_initialized() else ["none"]
        for mode in modes:
            record = measure(mode, args)
            if not dist.is_initialized() or dist.get_rank() == 0:
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
