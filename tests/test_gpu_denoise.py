"""The CUDA-graph denoising loop on the GPU: same latent as the plain loops, no host sync inside."""
import pytest
import torch
from golden import rel_error

from stdit_engine import Engine
from stdit_engine.schedulers import make_sampler
from stdit_engine.schedulers.iddpm import IDDPM

pytestmark = pytest.mark.gpu
PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]


@pytest.fixture(scope="module", params=[False, True], ids=["fp16", "fp16-fp8"])
def engine(request):
    return Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, fp8=request.param)


def test_graph_loop_matches_plain_loops(engine):
    kwargs = dict(seed=3, num_steps=20, output="latent", progress=False)
    graphed = engine.generate(PROMPTS, **kwargs)
    graphed_again = engine.generate(PROMPTS, **kwargs)  # replays the cached graph
    engine.denoiser.use_cuda_graphs = False
    try:
        hoisted = engine.generate(PROMPTS, **kwargs)
    finally:
        engine.denoiser.use_cuda_graphs = True
    y, mask = engine.encode_prompts(PROMPTS)
    generator = torch.Generator("cuda").manual_seed(3)
    z = torch.randn((2, *engine.preset.latent_shape), generator=generator, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        plain = IDDPM(20).sample(engine.stdit, z, y, mask, engine.stdit.y_embedder.y_embedding[None, None],
                                 generator=generator)
    assert torch.equal(graphed, graphed_again)
    assert rel_error(graphed, hoisted) < 1e-5
    assert rel_error(graphed, plain) < 1e-3


def test_step_loop_has_no_host_sync(engine):
    y, mask = engine.encode_prompts(PROMPTS)
    y_null = engine.stdit.y_embedder.y_embedding[None, None]
    z = torch.randn((2, *engine.preset.latent_shape), device="cuda", dtype=torch.float16)
    engine.denoiser.sample(IDDPM(5), z, y, mask, y_null)  # capture outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.denoiser.sample(IDDPM(30), z, y, mask, y_null, progress=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("placement", ["offload", "sequential"])
def test_placement_modes_give_the_resident_latent(engine, placement):
    kwargs = dict(seed=4, num_steps=5, output="latent", progress=False)
    resident = engine.generate(PROMPTS, **kwargs)
    moved = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, placement=placement,
                                       fp8=engine.stdit.is_fp8)
    assert moved.placement.mode == placement
    assert all(p.device.type == "cpu" for p in moved.stdit.parameters())  # off the GPU between calls
    assert torch.equal(moved.generate(PROMPTS, **kwargs), resident)
    assert all(p.device.type == "cpu" for p in moved.text_encoder.model.parameters())


@pytest.mark.parametrize("sampler", ["dpm-solver++", "unipc", "ddim:eta=1", "dpm-solver"])
def test_graph_loop_of_each_sampler_matches_the_hoisted_loop_without_host_sync(engine, sampler):
    kwargs = dict(seed=5, num_steps=12, output="latent", progress=False, sampler=sampler)
    engine.generate(PROMPTS, **kwargs)  # captures this sampler's graph outside the checked region
    y, mask = engine.encode_prompts(PROMPTS)
    z = torch.randn((2, *engine.preset.latent_shape), device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.denoiser.sample(make_sampler(sampler, 12), z, y, mask, engine.stdit.y_embedder.y_embedding[None, None])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graphed = engine.generate(PROMPTS, **kwargs)
    engine.denoiser.use_cuda_graphs = False
    try:
        hoisted = engine.generate(PROMPTS, **kwargs)
    finally:
        engine.denoiser.use_cuda_graphs = True
    assert rel_error(graphed, hoisted) < 1e-5
