"""End to end with random weights of the exact architectures, per preset and placement mode
(SPEC section 6 workloads: 100 steps, the reference's prompts per batch), against the estimate."""
import gc

import pytest
import torch
from workloads import REFERENCE_E2E

from stdit_engine import Engine
from stdit_engine.engine.memory import GIB, estimate_memory

PROMPTS = ["a sea turtle swimming over a coral reef", "a red vintage car driving through snow at dusk"]
RUNS = [  # (preset, placement, CUDA graphs)
    ("16x256x256", "resident", True),
    ("16x256x256", "sequential", True),
    ("16x512x512", "sequential", True),
    ("64x512x512", "sequential", True),
]
_engines: dict = {}


def engine_for(preset: str, placement: str) -> Engine:
    if (preset, placement) not in _engines:
        _engines.clear()  # one engine at a time: the previous one's memory must not count
        gc.collect()
        torch.cuda.empty_cache()
        _engines[preset, placement] = Engine.from_random_weights(preset, device="cuda", dtype=torch.float16,
                                                                placement=placement)
    return _engines[preset, placement]


@pytest.mark.parametrize("preset, placement, cuda_graphs", RUNS,
                         ids=[f"{p}-{m}-{'graphs' if g else 'no-graphs'}" for p, m, g in RUNS])
def test_end_to_end(benchmark, preset, placement, cuda_graphs):
    engine = engine_for(preset, placement)
    engine.denoiser.use_cuda_graphs = cuda_graphs
    engine.denoiser.clear()
    prompts_n, ref_s, ref_alloc, ref_reserved = REFERENCE_E2E[preset]
    prompts = PROMPTS[:prompts_n]
    engine.generate(prompts, seed=42, num_steps=2, progress=False)  # warm-up: kernels, graph capture
    torch.cuda.empty_cache()
    benchmark.pedantic(lambda: engine.generate(prompts, seed=42, num_steps=100, progress=False),
                       rounds=1, iterations=1)
    stages = {s.name: s for s in engine.last_stats}
    estimate = estimate_memory(preset, prompts_n, placement, torch.float16, torch.float32,
                               vae_chunk_frames=engine.decode_chunk_frames(prompts_n))
    peak_allocated = max(s.peak_allocated for s in stages.values())  # stages reset the peaks
    benchmark.extra_info.update(
        workload=f"end to end {preset}, {prompts_n} prompt(s), 100 steps", dtype="torch.float16",
        backend=engine.stdit.ops.name + (" + CUDA graph" if cuda_graphs else ""),
        placement=f"{placement}, T5 fp32",
        stage_seconds={name: round(s.seconds, 3) for name, s in stages.items()},
        stage_peak_allocated_gib={name: round(s.peak_allocated / GIB, 3) for name, s in stages.items()},
        stage_peak_reserved_gib={name: round(s.peak_reserved / GIB, 3) for name, s in stages.items()},
        sampling_s=stages["denoise"].seconds, total_s=sum(s.seconds for s in stages.values()),
        peak_allocated_gib=peak_allocated / GIB,
        peak_reserved_gib=max(s.peak_reserved for s in stages.values()) / GIB,
        estimated_peak_gib=estimate.peak / GIB, estimate_error=estimate.peak / peak_allocated - 1,
        reference_sampling_s=ref_s, reference_peak_allocated_gib=ref_alloc, reference_peak_reserved_gib=ref_reserved,
    )
