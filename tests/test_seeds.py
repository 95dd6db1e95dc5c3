"""Per-prompt seeds (`generate(prompts, seed=[...])`): each prompt gets the noise of its one-prompt
call whatever it is batched with; the int-seed protocol is untouched (test_engine.py)."""
import pytest
import torch
from golden import rel_error

from stdit_engine import Engine
from stdit_engine.engine.seeds import MAX_SEED, PromptNoise, new_seed

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow", "a cat on a sofa"]
STEPS = 3


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def latents(engine, prompts, seed, **kwargs):
    return engine.generate(prompts, seed=seed, num_steps=STEPS, output="latent", progress=False, **kwargs)


def test_a_one_seed_list_is_the_int_seed(engine):
    assert torch.equal(latents(engine, PROMPTS[:1], [11]), latents(engine, PROMPTS[:1], 11))


@pytest.mark.parametrize("batch_size", [None, 2])
def test_each_prompt_gets_its_one_prompt_call(engine, batch_size):
    seeds = [7, 8, 9]
    batched = latents(engine, PROMPTS, seeds, batch_size=batch_size)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        alone = latents(engine, [prompt], seed)
        assert rel_error(batched[i:i + 1], alone) < 1e-5, i
    # Whatever it is batched with: the same prompt and seed beside another neighbour.
    other = latents(engine, [PROMPTS[2], PROMPTS[0]], [123, 7])
    assert rel_error(other[1:], batched[:1]) < 1e-5
    assert (batched[0] - batched[1]).abs().mean() > 0.1  # the seeds do differ


def test_prompt_noise_layout():
    """A draw of k*n rows puts prompt i's own k rows at i, n+i, ... (the guidance batch layout)."""
    noise = PromptNoise([torch.Generator().manual_seed(s) for s in (1, 2)])
    drawn = noise.draw((4, 3), torch.float32, torch.device("cpu"))
    for i, seed in enumerate((1, 2)):
        own = torch.randn((2, 3), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(drawn[i::2], own)


def test_new_seed_is_in_range_and_fresh():
    seeds = {new_seed() for _ in range(20)}
    assert len(seeds) == 20 and all(0 <= s <= MAX_SEED for s in seeds)
