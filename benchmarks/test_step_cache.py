"""Step caching on the GPU (engine/step_cache.py): the time of each kind of step replayed from its
CUDA graph (a full step, one that also stores the residual or the attention outputs, one that skips
the blocks, ones that reuse attention outputs), and end to end at 16x256x256 with the cache.

A skipped step must cost a small fraction of a full one: that is what shows the block work is not
computed and discarded. End to end with random weights, what counts is which steps skip (recorded
with each run), not the picture: the schedules are set here, and BENCHMARKS.md says which of them
keep which PSNR on the proxy model."""
import pytest
import torch
from workloads import build_stdit, cuda_time_ms, median

from stdit_engine import Engine
from stdit_engine.bench import run_end_to_end
from stdit_engine.engine.cache_calibration import CacheCalibration, curve_key
from stdit_engine.engine.denoise import WHOLE_BATCH, GraphedStep, StepInputs
from stdit_engine.engine.step_cache import (ATTENTION, ATTENTION_KINDS, FULL, RESIDUAL, CachePlan,
                                            StepVariant, make_plan)
from stdit_engine.schedulers import make_sampler

PRESET, PROMPTS, STEPS = "16x256x256", 2, 100
ALL_ATTENTION = frozenset(ATTENTION_KINDS)
# (name, the plan mode whose buffers the step uses, the step's variant)
STEP_KINDS = [
    ("full", RESIDUAL, FULL),
    ("full, storing the residual", RESIDUAL, StepVariant(record=frozenset({RESIDUAL}))),
    ("blocks skipped (residual reused)", RESIDUAL, StepVariant(reuse=frozenset({RESIDUAL}))),
    ("full, storing all attention outputs", ATTENTION, StepVariant(record=ALL_ATTENTION)),
    *[(f"{kind} attention reused", ATTENTION, StepVariant(reuse=frozenset({kind}))) for kind in ATTENTION_KINDS],
    ("all attention reused", ATTENTION, StepVariant(reuse=ALL_ATTENTION)),
]
PRECISIONS = [(torch.float16, False), (torch.bfloat16, True)]  # (dtype, FP8 block linears)
_steps: dict = {}


def graphed_steps(dtype: torch.dtype, fp8: bool, mode: str):
    """A GraphedStep over one plan's buffers for 2 prompts at step 50 of 100, and the call that replays
    a variant as the loop does (inputs copied in, graph replayed)."""
    key = dtype, fp8, mode
    if key not in _steps:
        _steps.clear()  # one model at a time
        torch.cuda.empty_cache()
        model = build_stdit(PRESET, dtype, "triton", fp8=fp8)
        device = model.pos_embed.device
        g = torch.Generator(device).manual_seed(0)
        y = torch.randn(PROMPTS, 1, model.model_max_length, model.caption_channels, device=device, dtype=dtype,
                        generator=g)
        mask = torch.zeros(PROMPTS, model.model_max_length, dtype=torch.long, device=device)
        mask[:, :20] = 1
        sampler = make_sampler("iddpm", num_steps=STEPS)
        with torch.inference_mode():
            caption_kv, lengths = model.embed_caption(WHOLE_BATCH.captions(y, model.y_embedder.y_embedding[None, None]),
                                                      mask)
            temb, t0 = model.embed_timestep(sampler.model_timesteps(device))
            coefs = sampler.coefficient_table(device)
            rows, index = lengths.shape[0], STEPS // 2
            z = torch.randn(PROMPTS, 4, *model.input_size, device=device, dtype=dtype, generator=g)
            inputs = StepInputs(temb[index].expand(rows, -1), t0[index].expand(rows, -1), caption_kv, lengths,
                                coefs[index], sampler.new_memory(z), sampler.cfg_scale)
            recording = StepVariant(record=frozenset({RESIDUAL}) if mode == RESIDUAL else ALL_ATTENTION)
            graphed = GraphedStep(model, sampler, z, z, inputs, WHOLE_BATCH,
                                  CachePlan(mode, (recording,)).forwards(model, WHOLE_BATCH.latents(z)))
        _steps[key] = lambda variant: graphed(z, z, inputs.temb, inputs.t0, inputs.coefs, variant), graphed
    return _steps[key]


# The last parametrize varies slowest: one model (and its graphs) per precision.
@pytest.mark.parametrize("name, mode, variant", STEP_KINDS, ids=[k[0] for k in STEP_KINDS])
@pytest.mark.parametrize("dtype, fp8", PRECISIONS, ids=["fp16", "bf16+fp8"])
def test_step_time(benchmark, name, mode, variant, dtype, fp8):
    step, graphed = graphed_steps(dtype, fp8, mode)
    with torch.inference_mode():
        graphed.prepare([variant])
        times = cuda_time_ms(lambda: step(variant), warmup=3, reps=30)
        benchmark.pedantic(lambda: (step(variant), torch.cuda.synchronize()), rounds=3, iterations=1)
    benchmark.extra_info.update(
        workload=f"denoising step {PRESET}, {PROMPTS} prompts (guidance batch {2 * PROMPTS}): {name}",
        dtype=str(dtype), backend="triton + CUDA graph" + (" + FP8" if fp8 else ""), step_ms=median(times),
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)


# (sampler, steps, generate's cache arguments): the uncached run beside each cache setting. The
# residual cache's schedules come from SCHEDULES: every change 0.1 after an identity polynomial, so
# threshold 0.15 runs the blocks at every other step and 0.25 at every third (the first and last
# steps always), whatever the random weights would give.
E2E = [
    ("dpm-solver++", 20, {}),
    ("dpm-solver++", 20, dict(cache="residual", cache_threshold=0.15)),
    ("dpm-solver++", 20, dict(cache="residual", cache_threshold=0.25)),
    ("dpm-solver++", 20, dict(cache="attention")),
    ("iddpm", 100, {}),
    ("iddpm", 100, dict(cache="residual", cache_threshold=0.15)),
    ("iddpm", 100, dict(cache="residual", cache_threshold=0.25)),
    ("iddpm", 100, dict(cache="attention")),
]
SCHEDULES = CacheCalibration((1.0, 0.0), {curve_key(s, n): (0.0,) + (0.1,) * (n - 1) for s, n, _ in E2E}, {}, 0)
_engines: dict = {}


def engine_for(dtype: torch.dtype, fp8: bool) -> Engine:
    key = dtype, fp8
    if key not in _engines:
        _engines.clear()
        torch.cuda.empty_cache()
        engine = Engine.from_random_weights(PRESET, device="cuda", dtype=dtype, placement="resident", fp8=fp8)
        engine.cache_calibration = SCHEDULES
        _engines[key] = engine
    return _engines[key]


@pytest.mark.parametrize("sampler, steps, cache", E2E,
                         ids=[f"{s}{n}-{c.get('cache', 'nocache')}{c.get('cache_threshold', '')}" for s, n, c in E2E])
@pytest.mark.parametrize("dtype, fp8", PRECISIONS, ids=["fp16", "bf16+fp8"])
def test_end_to_end_with_cache(benchmark, sampler, steps, cache, dtype, fp8):
    engine = engine_for(dtype, fp8)
    plan = make_plan(cache.get("cache"), sampler=sampler, evaluations=steps, threshold=cache.get("cache_threshold"),
                     broadcast=cache.get("cache_broadcast"), calibration=engine.cache_calibration)
    record = benchmark.pedantic(
        lambda: run_end_to_end(engine, num_steps=steps, warmup_steps=steps, sampler=sampler, **cache),
        rounds=1, iterations=1)
    setting = "no cache" if plan is None else (
        f"blocks skipped at {plan.reused(RESIDUAL)} of {steps} steps" if plan.mode == RESIDUAL else
        "attention reused (spatial, temporal, cross) at " + ", ".join(str(plan.reused(k)) for k in ATTENTION_KINDS)
        + f" of {steps} steps")
    record["workload"] += f", {sampler}, {setting}"
    benchmark.extra_info.update(record)
