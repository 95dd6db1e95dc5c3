"""End-to-end generation with random weights of the exact architectures (SPEC section 6 workloads)."""
import pytest
import torch
from workloads import REFERENCE_E2E

from stdit_engine import Engine

PROMPTS = ["a sea turtle swimming over a coral reef", "a red vintage car driving through snow at dusk"]


@pytest.fixture(scope="module")
def engine_16x256():
    return Engine.from_random_weights("16x256x256", device="cuda", dtype=torch.float16)


@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["graphs", "no-graphs"])
def test_end_to_end_16x256(benchmark, engine_16x256, cuda_graphs):
    preset = "16x256x256"
    engine = engine_16x256
    engine.denoiser.use_cuda_graphs = cuda_graphs
    prompts_n, ref_s, ref_alloc, ref_reserved = REFERENCE_E2E[preset]
    prompts = PROMPTS[:prompts_n]
    engine.generate(prompts, seed=42, num_steps=2, progress=False)  # warm-up: kernels, graph capture
    benchmark.pedantic(lambda: engine.generate(prompts, seed=42, num_steps=100, progress=False),
                       rounds=1, iterations=1)
    stages = {s.name: s for s in engine.last_stats}
    benchmark.extra_info.update(
        workload=f"end to end {preset}, {prompts_n} prompts, 100 steps", dtype="torch.float16",
        backend=engine.stdit.ops.name + (" + CUDA graph" if cuda_graphs else ""),
        placement="resident, T5 fp32",
        stage_seconds={name: s.seconds for name, s in stages.items()},
        sampling_s=stages["denoise"].seconds, total_s=sum(s.seconds for s in stages.values()),
        # Stages reset the allocator's peaks, so the run's peak is the largest stage peak.
        peak_allocated_gib=max(s.peak_allocated for s in stages.values()) / 2**30,
        peak_reserved_gib=max(s.peak_reserved for s in stages.values()) / 2**30,
        reference_sampling_s=ref_s, reference_peak_allocated_gib=ref_alloc, reference_peak_reserved_gib=ref_reserved,
    )
