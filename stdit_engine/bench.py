"""End-to-end benchmark of `generate()` against the reference figures (SPEC section 6).

`stdit-engine bench` and the pytest-benchmark suite in benchmarks/ both call `run_end_to_end`, so
the command line and the suite measure the same thing: one timed call after a short warm-up
(kernel selection, graph capture), stage times and peaks, and the memory estimate beside them.
"""
from __future__ import annotations

import torch

from .configs import get_preset
from .engine.api import Engine
from .engine.memory import GIB, estimate_memory
from .reference import REFERENCE_E2E

PROMPTS = ["a sea turtle swimming over a coral reef", "a red vintage car driving through snow at dusk"]


def run_end_to_end(engine: Engine, num_steps: int = 100, warmup_steps: int = 2, sampler: str = "iddpm",
                   **generate_options) -> dict:
    """Times one `generate()` of the preset's reference workload on `engine` (with `sampler` for
    `num_steps` steps); returns a flat record. `generate_options`: more arguments of both generate()
    calls (e.g. a step cache's)."""
    preset = engine.preset
    reference = REFERENCE_E2E.get(preset.name)
    prompts_n = reference.prompts if reference else preset.prompts_per_batch
    prompts = (PROMPTS * prompts_n)[:prompts_n]
    engine.generate(prompts, seed=42, num_steps=warmup_steps, progress=False, sampler=sampler, **generate_options)
    # The estimate is of any call's peak, the first's capture included: it is compared with both calls'.
    first_peak = max(s.peak_allocated for s in engine.last_stats)
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
    engine.prompt_cache.clear()  # the timed call encodes its prompts, as the reference's does
    engine.generate(prompts, seed=42, num_steps=num_steps, progress=False, sampler=sampler, **generate_options)
    stages = {s.name: s for s in engine.last_stats}
    estimate = estimate_memory(preset, prompts_n, engine.placement.mode, engine.dtype, engine.text_encoder.dtype,
                               vae_chunk_frames=engine.decode_chunk_frames(prompts_n), device=engine.device,
                               backend=engine.stdit.ops.name, fp8=engine.stdit.is_fp8,
                               cache=generate_options.get("cache"))
    peak_allocated = max(s.peak_allocated for s in stages.values())  # stages reset the peaks
    graphs = engine.denoiser.use_cuda_graphs and engine.device.type == "cuda"
    return dict(
        workload=f"end to end {preset.name}, {prompts_n} prompt(s), {num_steps} steps"
                 + ("" if sampler == "iddpm" else f" of {sampler}"),
        device=torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu",
        dtype=str(engine.dtype) + (", FP8 block linears" if engine.stdit.is_fp8 else ""),
        backend=engine.stdit.ops.name + (" + CUDA graph" if graphs else ""),
        placement=f"{engine.placement.mode}, T5 {str(engine.text_encoder.dtype).removeprefix('torch.')}",
        stage_seconds={n: round(s.seconds, 3) for n, s in stages.items()},
        stage_peak_allocated_gib={n: round(s.peak_allocated / GIB, 3) for n, s in stages.items()},
        stage_peak_reserved_gib={n: round(s.peak_reserved / GIB, 3) for n, s in stages.items()},
        prompts_encoded=True,  # not found in the prompt cache: the encode's time and memory are counted
        sampling_s=stages["denoise"].seconds, total_s=sum(s.seconds for s in stages.values()),
        peak_allocated_gib=peak_allocated / GIB,
        peak_reserved_gib=max(s.peak_reserved for s in stages.values()) / GIB,
        first_call_peak_allocated_gib=first_peak / GIB,
        estimated_peak_gib=estimate.peak / GIB, estimate_error=estimate.peak / max(peak_allocated, first_peak) - 1,
        reference_sampling_s=reference.sampling_s if reference and num_steps == 100 and sampler == "iddpm" else None,
        reference_peak_allocated_gib=reference and reference.peak_allocated_gib,
        reference_peak_reserved_gib=reference and reference.peak_reserved_gib,
    )


def describe(record: dict) -> str:
    speedup = (f", {record['reference_sampling_s'] / record['sampling_s']:.2f}x the reference's sampling"
               if record["reference_sampling_s"] else "")
    if record["device"] == "cpu":
        memory = (f"peak {record['peak_allocated_gib']:.3f} GiB of tensors / process peak RSS "
                  f"{record['peak_reserved_gib']:.2f} GiB, estimated {record['estimated_peak_gib']:.3f} GiB")
    else:
        memory = (f"peak {record['peak_allocated_gib']:.2f} GiB allocated / {record['peak_reserved_gib']:.2f} GiB "
                  f"reserved, estimated {record['estimated_peak_gib']:.2f} GiB")
    return (f"{record['workload']} on {record['device']} ({record['backend']}, {record['placement']}): "
            f"sampling {record['sampling_s']:.2f} s, total {record['total_s']:.2f} s{speedup}; {memory}")


def bench_preset(preset: str, *, placement: str = "auto", num_steps: int = 100, device=None, dtype=None,
                 cuda_graphs: bool = True, fp8: bool = False) -> dict:
    # No warm-up while loading: run_end_to_end's own first call pays it, and its peak is compared with the estimate.
    engine = Engine.from_random_weights(get_preset(preset), placement=placement, device=device, dtype=dtype,
                                        cuda_graphs=cuda_graphs, fp8=fp8, warmup=False)
    return run_end_to_end(engine, num_steps=num_steps)
