"""On the GPU: concurrent generate() calls get their solo results bitwise (CUDA graphs on, every
placement), progress counts device-completed steps with the host at most LOOKAHEAD_STEPS ahead,
cancellation stops within that bound and leaves the engine exact, per-prompt seeds, and the graph
cache stays bounded when clients vary cfg, steps and batch size."""
import numpy as np
import pytest
import torch
from golden import rel_error
from threads import run_together

from stdit_engine import Cancelled, CancelToken, Engine
from stdit_engine.engine.graph_cache import MAX_CACHED_GRAPHS
from stdit_engine.engine.progress import LOOKAHEAD_STEPS, StepMonitor
from stdit_engine.engine.prompt_cache import PromptEmbeddingCache
from stdit_engine.schedulers import make_sampler

pytestmark = pytest.mark.gpu
PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow", "a cat on a sofa"]
SEEDS = [1, 2, 3, 4]


def tiny(**kwargs):
    # No warm-up while loading: the tests count the graphs their own calls capture.
    return Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, warmup=False, **kwargs)


def latents(engine, prompts=PROMPTS[:2], seed=1, **kwargs):
    return engine.generate(prompts, **{"seed": seed, "num_steps": 8, "output": "latent", "progress": False, **kwargs})


def test_concurrent_calls_at_16x256x256_are_bitwise_their_solo_results():
    engine = Engine.from_random_weights("16x256x256", device="cuda", dtype=torch.float16, placement="resident",
                                        warmup=False)  # the first call captures, below
    engine.prompt_cache = PromptEmbeddingCache(0)  # every call runs T5, beside the others' stages

    def call(seed):  # two threads denoise only, two decode too, so stages of different calls overlap
        output = "latent" if seed % 2 else "video"
        result = engine.generate(PROMPTS[seed % 3], seed=seed, num_steps=5, output=output, progress=False)
        return result if output == "latent" else result[0].frames

    # Concurrent first: the first denoise captures the graph while other threads use the GPU.
    together = run_together([lambda seed=seed: call(seed) for seed in SEEDS])
    alone = [call(seed) for seed in SEEDS]
    for seed, one, concurrent in zip(SEEDS, alone, together):
        assert torch.equal(one, concurrent), seed


@pytest.mark.parametrize("placement", ["resident", "lean", "offload", "sequential"])
def test_concurrent_calls_in_every_placement(placement):
    engine = tiny(placement=placement)
    engine.prompt_cache = PromptEmbeddingCache(0)
    together = run_together([lambda seed=seed: latents(engine, seed=seed) for seed in SEEDS])
    alone = [latents(engine, seed=seed) for seed in SEEDS]
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_progress_counts_device_completed_steps_and_the_host_stays_close():
    reports, steps = [], 8
    monitor = StepMonitor(steps, torch.device("cuda"), report=lambda done, total: reports.append((done, total)))
    with monitor.loop():
        for queued in range(1, steps + 1):
            torch.cuda._sleep(40_000_000)  # a step of tens of ms on the device; the host queues in microseconds
            monitor.step_queued()
            assert queued - monitor.done <= LOOKAHEAD_STEPS  # never further ahead
            assert monitor.done == max(0, queued - LOOKAHEAD_STEPS)  # the device is behind: not counted yet
    assert reports == [(done, steps) for done in range(1, steps + 1)]


def test_monitored_loop_has_no_host_sync():
    engine = tiny()
    y, mask = engine.encode_prompts(PROMPTS[:2])
    y_null = engine.stdit.y_embedder.y_embedding[None, None]
    z = torch.randn((2, *engine.preset.latent_shape), device="cuda", dtype=torch.float16)
    engine.denoiser.sample(make_sampler("iddpm", num_steps=5), z, y, mask, y_null)  # capture first
    torch.cuda.synchronize()
    monitor = StepMonitor(30, torch.device("cuda"), report=lambda done, total: None)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with monitor.loop():
            engine.denoiser.sample(make_sampler("iddpm", num_steps=30), z, y, mask, y_null, monitor=monitor)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert monitor.done == 30


def test_cancel_stops_within_the_bound_and_the_engine_stays_exact(monkeypatch):
    engine, token, seen, queued = tiny(), CancelToken(), [], []
    latents(engine)  # capture the graph first, so the cancelled call replays it
    step_queued = StepMonitor.step_queued
    monkeypatch.setattr(StepMonitor, "step_queued", lambda self: queued.append(1) or step_queued(self))

    def cancel_at_third(done, total):
        seen.append(done)
        if done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        latents(engine, num_steps=100, progress=cancel_at_third, cancel=token)
    assert seen == [1, 2, 3]
    assert len(queued) <= 3 + LOOKAHEAD_STEPS + 1
    assert torch.equal(latents(engine, seed=9), latents(tiny(), seed=9))


def test_graph_cache_stays_bounded_over_cfg_steps_and_batch_sizes():
    engine = tiny()
    for i, cfg in enumerate(np.linspace(1.0, 12.0, 12)):
        latents(engine, PROMPTS[:1], num_steps=2 + i % 4, cfg_scale=float(cfg))
        assert len(engine.denoiser._graphs) == 1
        if i == 5:
            reserved = torch.cuda.memory_reserved()
    assert torch.cuda.memory_reserved() <= reserved
    for n in range(1, 2 * MAX_CACHED_GRAPHS + 1):
        latents(engine, ["a prompt"] * n, num_steps=2, batch_size=n)
        assert len(engine.denoiser._graphs) <= MAX_CACHED_GRAPHS
    peak_pools = torch.cuda.memory_reserved()
    for n in range(1, 2 * MAX_CACHED_GRAPHS + 1):  # again: evicting and capturing, memory does not grow
        latents(engine, ["a prompt"] * n, num_steps=2, batch_size=n)
    assert torch.cuda.memory_reserved() <= peak_pools * 1.1


def test_a_graph_replayed_with_another_cfg_equals_its_own_capture():
    engine = tiny()
    latents(engine, cfg_scale=7.3)  # captures
    replayed = latents(engine, cfg_scale=4.1)
    assert len(engine.denoiser._graphs) == 1
    assert torch.equal(replayed, latents(tiny(), cfg_scale=4.1))  # a graph captured at 4.1
    plain = tiny(cuda_graphs=False)
    assert rel_error(replayed, latents(plain, cfg_scale=4.1)) < 1e-5


def test_per_prompt_seeds_on_the_gpu():
    engine = tiny()
    assert torch.equal(latents(engine, PROMPTS[:1], [11]), latents(engine, PROMPTS[:1], 11))
    batched = latents(engine, PROMPTS, [7, 8, 9])
    for i, seed in enumerate([7, 8, 9]):
        assert rel_error(batched[i:i + 1], latents(engine, PROMPTS[i:i + 1], seed)) < 1e-3  # fp16
