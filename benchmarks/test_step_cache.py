"""Step caching on the GPU (engine/step_cache.py): the time of each kind of step replayed from its
CUDA graph (a full step, one that also stores the residual or the attention outputs, one that skips
the blocks, ones that reuse attention outputs), and end to end at 16x256x256 with the cache.

A skipped step must cost a small fraction of a full one: that is what shows the block work is not
computed and discarded. End to end with random weights, what counts is which steps skip (recorded
with each run), not the picture: the schedules are set here, and BENCHMARKS.md says which of them
keep which PSNR on the proxy model.

At 64x512x512 (1 prompt, bf16 + FP8; select with `-k 64x512x512`) one resident engine serves both
the step times and the end-to-end runs, so the preset's model is built and its kernels compiled
once; its end-to-end residual cache runs on the schedule that the trained proxy model's calibration
gives at the default threshold (engine/cache_defaults.py), the one whose PSNR the proxy rows of
BENCHMARKS.md report."""
import pytest
import torch
from workloads import build_stdit, cuda_time_ms, median

from stdit_engine import Engine
from stdit_engine.bench import run_end_to_end
from stdit_engine.engine.cache_calibration import CacheCalibration, curve_key
from stdit_engine.engine.cache_defaults import cache_defaults
from stdit_engine.engine.denoise import WHOLE_BATCH, GraphedStep, StepInputs
from stdit_engine.engine.step_cache import (ATTENTION, ATTENTION_KINDS, FULL, RESIDUAL, CachePlan,
                                            StepVariant, make_plan)
from stdit_engine.quality.cache_sweep import proxy_calibration
from stdit_engine.quality.proxy import load_proxy_engine
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


def graphed_step(model, prompts: int, mode: str):
    """A GraphedStep of `model` over one plan's buffers for `prompts` prompts at step 50 of 100, and
    the call that replays a variant as the loop does (inputs copied in, graph replayed)."""
    device, dtype = model.pos_embed.device, model.dtype
    g = torch.Generator(device).manual_seed(0)
    y = torch.randn(prompts, 1, model.model_max_length, model.caption_channels, device=device, dtype=dtype,
                    generator=g)
    mask = torch.zeros(prompts, model.model_max_length, dtype=torch.long, device=device)
    mask[:, :20] = 1
    sampler = make_sampler("iddpm", num_steps=STEPS)
    with torch.inference_mode():
        caption_kv, lengths = model.embed_caption(WHOLE_BATCH.captions(y, model.y_embedder.y_embedding[None, None]),
                                                  mask)
        temb, t0 = model.embed_timestep(sampler.model_timesteps(device))
        coefs = sampler.coefficient_table(device)
        rows, index = lengths.shape[0], STEPS // 2
        z = torch.randn(prompts, 4, *model.input_size, device=device, dtype=dtype, generator=g)
        inputs = StepInputs(temb[index].expand(rows, -1), t0[index].expand(rows, -1), caption_kv, lengths,
                            coefs[index], sampler.new_memory(z), sampler.cfg_scale)
        recording = StepVariant(record=frozenset({RESIDUAL}) if mode == RESIDUAL else ALL_ATTENTION)
        graphed = GraphedStep(model, sampler, z, z, inputs, WHOLE_BATCH,
                              CachePlan(mode, (recording,)).forwards(model, WHOLE_BATCH.latents(z)))
    return lambda variant: graphed(z, z, inputs.temb, inputs.t0, inputs.coefs, variant), graphed


def graphed_steps(dtype: torch.dtype, fp8: bool, mode: str):
    """graphed_step at 16x256x256, one model at a time."""
    key = dtype, fp8, mode
    if key not in _steps:
        _steps.clear()
        torch.cuda.empty_cache()
        _steps[key] = graphed_step(build_stdit(PRESET, dtype, "triton", fp8=fp8), PROMPTS, mode)
    return _steps[key]


def time_step(benchmark, step, graphed, variant, warmup: int, reps: int, rounds: int) -> float:
    """The median ms of replaying `variant` (captured first); the benchmark's record gets `rounds`."""
    with torch.inference_mode():
        graphed.prepare([variant])
        times = cuda_time_ms(lambda: step(variant), warmup=warmup, reps=reps)
        benchmark.pedantic(lambda: (step(variant), torch.cuda.synchronize()), rounds=rounds, iterations=1)
    return median(times)


# The last parametrize varies slowest: one model (and its graphs) per precision.
@pytest.mark.parametrize("name, mode, variant", STEP_KINDS, ids=[k[0] for k in STEP_KINDS])
@pytest.mark.parametrize("dtype, fp8", PRECISIONS, ids=["fp16", "bf16+fp8"])
def test_step_time(benchmark, name, mode, variant, dtype, fp8):
    step, graphed = graphed_steps(dtype, fp8, mode)
    step_ms = time_step(benchmark, step, graphed, variant, warmup=3, reps=30, rounds=3)
    benchmark.extra_info.update(
        workload=f"denoising step {PRESET}, {PROMPTS} prompts (guidance batch {2 * PROMPTS}): {name}",
        dtype=str(dtype), backend="triton + CUDA graph" + (" + FP8" if fp8 else ""), step_ms=step_ms,
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)


# (sampler, steps, generate's cache arguments): the uncached run beside each cache setting. The
# residual cache's schedules come from SCHEDULES: every change 0.1 after an identity polynomial and
# every sensitivity 0.1, so the n-th step since the blocks ran costs 0.1 n: threshold 0.15 runs the
# blocks at every other step and 0.25 at every third (the first and last steps always), whatever the
# random weights would give.
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
SCHEDULES = CacheCalibration((1.0, 0.0), {curve_key(s, n): (0.0,) + (0.1,) * (n - 1) for s, n, _ in E2E},
                             {curve_key(s, n): (0.1,) * n for s, n, _ in E2E}, {}, 0)
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
    record["workload"] += f", {setting}"  # run_end_to_end names a sampler other than iddpm
    benchmark.extra_info.update(record)


# ------------------------------------------------------------------ 64x512x512, 1 prompt, bf16 + FP8
# Sized to fit one device call with the rest: the engine's build and kernel compilation, five step
# kinds (captured, then a few replays each) and three end-to-end runs of 20 steps, each after a
# warm-up that captures its graphs.
LARGE, LARGE_PROMPTS = "64x512x512", 1
LARGE_STEP_KINDS = [kind for kind in STEP_KINDS if kind[0] in (
    "full", "full, storing the residual", "blocks skipped (residual reused)", "full, storing all attention outputs",
    "all attention reused")]
_large_steps: dict = {}  # mode -> graphed_step of the engine's STDiT; dropped before the end-to-end runs


@pytest.fixture(scope="module")
def large_engine():
    _steps.clear()
    _engines.clear()
    torch.cuda.empty_cache()
    engine = Engine.from_random_weights(LARGE, device="cuda", dtype=torch.bfloat16, placement="resident", fp8=True)
    yield engine
    _large_steps.clear()


# The attention cache's buffers are every block's three attention outputs (tens of GiB at this
# preset): the residual kinds run first, on their own graphs.
@pytest.mark.parametrize("name, mode, variant", LARGE_STEP_KINDS, ids=[f"{LARGE}-{k[0]}" for k in LARGE_STEP_KINDS])
def test_step_time_64x512x512(benchmark, large_engine, name, mode, variant):
    if mode not in _large_steps:
        _large_steps.clear()
        torch.cuda.empty_cache()
        _large_steps[mode] = graphed_step(large_engine.stdit, LARGE_PROMPTS, mode)
    step, graphed = _large_steps[mode]
    step_ms = time_step(benchmark, step, graphed, variant, warmup=1, reps=5, rounds=1)
    benchmark.extra_info.update(
        workload=f"denoising step {LARGE}, {LARGE_PROMPTS} prompt (guidance batch {2 * LARGE_PROMPTS}): {name}",
        dtype=str(large_engine.dtype), backend="triton + CUDA graph + FP8", step_ms=step_ms,
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)


def proxy_schedule() -> CacheCalibration:
    """The trained proxy model's calibration, as tools/step_cache_quality.py makes it by default
    (the same runs, so the same polynomial): its change curves stand for a trained checkpoint's,
    which random weights do not have."""
    proxy = load_proxy_engine(device="cuda")
    try:
        return proxy_calibration(proxy)
    finally:
        del proxy
        torch.cuda.empty_cache()


# Each cache at its default setting; the attention cache's run also checks the memory estimate
# with its buffers (estimated_peak_gib against peak_allocated_gib).
LARGE_E2E = [("dpm-solver++", 20, {}), ("dpm-solver++", 20, dict(cache="residual")),
             ("dpm-solver++", 20, dict(cache="attention"))]


@pytest.mark.parametrize("sampler, steps, cache", LARGE_E2E,
                         ids=[f"{LARGE}-{s}{n}-{c.get('cache', 'nocache')}" for s, n, c in LARGE_E2E])
def test_end_to_end_with_cache_64x512x512(benchmark, large_engine, sampler, steps, cache):
    _large_steps.clear()  # the step timings' graphs and buffers
    large_engine.denoiser.clear()  # the last run's: each run's peak memory is its own cache's
    torch.cuda.empty_cache()
    if cache.get("cache") == RESIDUAL and large_engine.cache_calibration is None:
        large_engine.cache_calibration = proxy_schedule()
    plan = make_plan(cache.get("cache"), sampler=sampler, evaluations=steps, calibration=large_engine.cache_calibration)
    # Without a cache, a 2-step warm-up captures the one graph; with it, the same plan's steps.
    record = benchmark.pedantic(
        lambda: run_end_to_end(large_engine, num_steps=steps, warmup_steps=steps if plan else 2, sampler=sampler,
                               **cache), rounds=1, iterations=1)
    if plan is None:
        setting = "no cache"
    elif plan.mode == RESIDUAL:
        setting = (f"residual cache at the default threshold {cache_defaults(sampler, steps).residual_threshold} "
                   f"on the proxy's schedule: blocks skipped at {plan.reused(RESIDUAL)} of {steps} steps")
    else:
        setting = ("attention cache at its default: spatial, temporal, cross reused at "
                   + ", ".join(str(plan.reused(k)) for k in ATTENTION_KINDS) + f" of {steps} steps")
    record["workload"] += f", {setting}"  # run_end_to_end names a sampler other than iddpm
    benchmark.extra_info.update(record)
