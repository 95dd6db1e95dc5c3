"""End to end with random weights of the exact architectures, per preset and placement mode
(SPEC section 6 workloads: 100 steps, the reference's prompts per batch), against the estimate.
The measurement itself is `stdit_engine.bench.run_end_to_end`, which `stdit-engine bench` runs too."""
import gc

import pytest
import torch

from stdit_engine import Engine
from stdit_engine.bench import run_end_to_end

FP16, BF16 = torch.float16, torch.bfloat16
RUNS = [  # (preset, placement, CUDA graphs, STDiT/VAE dtype, FP8 block linears): fp16 is the reference script's
    ("16x256x256", "lean", True, FP16, False),  # the default placement, at every preset
    ("16x512x512", "lean", True, FP16, False),
    ("64x512x512", "lean", True, FP16, False),
    ("16x256x256", "resident", True, FP16, False),
    ("16x256x256", "resident", True, BF16, False),
    ("16x256x256", "resident", True, FP16, True),
    ("16x256x256", "resident", True, BF16, True),
    ("16x256x256", "offload", True, FP16, False),
    ("16x256x256", "sequential", True, FP16, False),
    ("16x512x512", "sequential", True, FP16, False),
    ("64x512x512", "sequential", True, FP16, False),
    ("64x512x512", "sequential", True, BF16, True),  # fits the estimate's FP8 MLP peak
]
_engines: dict = {}


def engine_for(preset: str, placement: str, dtype: torch.dtype, fp8: bool) -> Engine:
    key = preset, placement, dtype, fp8
    if key not in _engines:
        _engines.clear()  # one engine at a time: the previous one's memory must not count
        gc.collect()
        torch.cuda.empty_cache()
        # No warm-up while loading: run_end_to_end's first call is the one that captures.
        _engines[key] = Engine.from_random_weights(preset, device="cuda", dtype=dtype, placement=placement, fp8=fp8,
                                                   warmup=False)
    return _engines[key]


@pytest.mark.parametrize("preset, placement, cuda_graphs, dtype, fp8", RUNS,
                         ids=[f"{p}-{m}-{'graphs' if g else 'no-graphs'}-{str(d)[6:]}{'-fp8' if f else ''}"
                              for p, m, g, d, f in RUNS])
def test_end_to_end(benchmark, preset, placement, cuda_graphs, dtype, fp8):
    engine = engine_for(preset, placement, dtype, fp8)
    engine.denoiser.use_cuda_graphs = cuda_graphs
    engine.denoiser.clear()
    record = benchmark.pedantic(lambda: run_end_to_end(engine), rounds=1, iterations=1)
    benchmark.extra_info.update(record)


SAMPLER_RUNS = [  # 16x256x256, 2 prompts, fp16, resident, CUDA graphs: time and peak VRAM per sampler config
    ("iddpm", 100), ("iddpm", 20), ("ddim", 20),
    ("dpm-solver++", 10), ("dpm-solver++", 15), ("dpm-solver++", 20), ("dpm-solver++", 25),
    ("unipc", 10), ("unipc", 15), ("unipc", 20),
]


@pytest.mark.parametrize("sampler, steps", SAMPLER_RUNS, ids=[f"{s}-{n}" for s, n in SAMPLER_RUNS])
def test_end_to_end_samplers(benchmark, sampler, steps):
    engine = engine_for("16x256x256", "resident", FP16, False)
    engine.denoiser.use_cuda_graphs = True
    record = benchmark.pedantic(lambda: run_end_to_end(engine, num_steps=steps, sampler=sampler), rounds=1, iterations=1)
    benchmark.extra_info.update(record)
