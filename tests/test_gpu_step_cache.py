"""Step caching in the CUDA-graph loop on the GPU: each kind of step is its own graph, picked per step
by the host from the static plan, with no host sync; the replayed cached run gives the eager cached
run's latent, and never-skip settings give the uncached latent bitwise."""
import pytest
import torch
from golden import rel_error

from stdit_engine import Engine
from stdit_engine.engine.cache_calibration import calibrate
from stdit_engine.engine.step_cache import RESIDUAL, AttentionBroadcast, make_plan
from stdit_engine.schedulers.iddpm import IDDPM

pytestmark = pytest.mark.gpu
PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
STEPS = 20
EVERY_OTHER = AttentionBroadcast.uniform((2, 2, 3), 0.0, 1.0)


def null_caption(engine):
    """The learned caption of guidance's unconditional half, [1, 1, L, C]."""
    return engine.stdit.y_embedder.y_embedding[None, None]


@pytest.fixture(scope="module", params=[False, True], ids=["fp16", "fp16-fp8"])
def engine(request):
    engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, fp8=request.param)
    engine.cache_calibration = calibrate(engine, runs=[("iddpm", STEPS)], prompts=PROMPTS)
    return engine


def skipping_threshold(engine) -> float:
    for threshold in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):
        plan = make_plan("residual", sampler="iddpm", evaluations=STEPS, threshold=threshold,
                         calibration=engine.cache_calibration)
        if plan.reused(RESIDUAL) >= STEPS // 4:
            return threshold
    raise AssertionError("no threshold skips enough")


def latents(engine, graphs=True, **kwargs):
    engine.denoiser.use_cuda_graphs = graphs
    try:
        return engine.generate(PROMPTS, seed=3, num_steps=STEPS, output="latent", progress=False, **kwargs)
    finally:
        engine.denoiser.use_cuda_graphs = True


def test_graphed_cached_runs_match_the_eager_cached_runs(engine):
    for cache in (dict(cache="residual", cache_threshold=skipping_threshold(engine)),
                  dict(cache="attention", cache_broadcast=EVERY_OTHER)):
        graphed = latents(engine, **cache)
        assert torch.equal(graphed, latents(engine, **cache))  # replays the captured variants
        assert rel_error(graphed, latents(engine, graphs=False, **cache)) < 1e-5
        assert rel_error(graphed, latents(engine)) > 1e-4  # it did reuse something


def test_never_skip_is_the_uncached_latent_bitwise(engine):
    uncached = latents(engine)
    assert torch.equal(latents(engine, cache="residual", cache_threshold=0.0), uncached)
    assert torch.equal(latents(engine, cache="attention", cache_broadcast=AttentionBroadcast.uniform((1, 1, 1))),
                       uncached)


def test_cached_step_loop_has_no_host_sync(engine):
    y, mask = engine.encode_prompts(PROMPTS)
    z = torch.randn((2, *engine.preset.latent_shape), device="cuda", dtype=torch.float16)
    plan = make_plan("residual", sampler="iddpm", evaluations=STEPS, threshold=skipping_threshold(engine),
                     calibration=engine.cache_calibration)
    engine.denoiser.sample(IDDPM(STEPS), z, y, mask, null_caption(engine), cache=plan)  # capture first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.denoiser.sample(IDDPM(STEPS), z, y, mask, null_caption(engine), cache=plan)
    finally:
        torch.cuda.set_sync_debug_mode("default")
