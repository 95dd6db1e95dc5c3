"""Several threads calling generate() on one engine each get what their call returns alone (CPU, tiny)."""
import pytest
import torch
from threads import run_together

from stdit_engine import Engine
from stdit_engine.engine.prompt_cache import PromptEmbeddingCache

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
SEEDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def engine():
    engine = Engine.from_random_weights("tiny", device="cpu")
    engine.prompt_cache = PromptEmbeddingCache(0)  # every call runs T5, beside the others' stages
    return engine


def test_four_threads_get_their_sequential_results(engine):
    def call(seed, output="latent"):
        return engine.generate(PROMPTS, seed=seed, num_steps=3, output=output, progress=False)

    alone = [call(seed) for seed in SEEDS]
    together = run_together([lambda seed=seed: call(seed) for seed in SEEDS])
    for seed, one, concurrent in zip(SEEDS, alone, together):
        assert torch.equal(one, concurrent), seed
    # Videos too (every stage), with per-prompt seeds.
    frames_alone = [call([seed, seed + 10], "video") for seed in SEEDS[:2]]
    frames_together = run_together([lambda seed=seed: call([seed, seed + 10], "video") for seed in SEEDS[:2]])
    for one, concurrent in zip(frames_alone, frames_together):
        assert all(torch.equal(a.frames, b.frames) for a, b in zip(one, concurrent))


def test_last_stats_is_one_calls_stages(engine):
    run_together([lambda seed=seed: engine.generate(PROMPTS[:1], seed=seed, num_steps=2, progress=False)
                  for seed in SEEDS[:2]])
    assert [s.name for s in engine.last_stats] == ["encode", "denoise", "decode"]
