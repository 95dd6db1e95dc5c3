"""The prompt-embedding cache: exact (bitwise the computed embedding), least recently used first out,
bounded, shared safely between threads; and the engine's results do not depend on it."""
import threading

import pytest
import torch

from stdit_engine import Engine
from stdit_engine.engine.prompt_cache import PromptEmbeddingCache
from stdit_engine.errors import ConfigError

CPU = torch.device("cpu")
A, B, C = "a sea turtle swimming over a coral reef", "a red car in the snow", "two dogs playing on the beach at sunset"


class CountingEncoder:
    """A stand-in T5: the embedding of a prompt is a function of its text alone; records each call."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, prompts):
        with self.lock:
            self.calls.append(list(prompts))
        y = torch.stack([torch.full((1, 3, 2), float(sum(map(ord, p))) / 7) for p in prompts])
        mask = torch.stack([torch.tensor([1, 1, len(p) % 2]) for p in prompts])
        return y, mask


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def test_cached_embedding_is_bitwise_the_computed_one(engine):
    engine.prompt_cache = PromptEmbeddingCache()
    computed = engine.encode_prompts([A, B])  # misses: computed by T5, then kept
    assert len(engine.prompt_cache) == 2
    cached = engine.encode_prompts([A, B])
    fresh = engine.text_encoder.encode([A, B])  # T5 itself, no cache
    for got in (computed, cached):
        assert torch.equal(got[0], fresh[0]) and got[0].dtype == fresh[0].dtype
        assert torch.equal(got[1], fresh[1]) and got[1].dtype == fresh[1].dtype
    assert (engine.prompt_cache.hits, engine.prompt_cache.misses) == (2, 2)


def test_only_the_missing_prompts_are_encoded_each_once():
    cache, encoder = PromptEmbeddingCache(), CountingEncoder()
    cache.encode([A], encoder, CPU)
    y, mask = cache.encode([B, A, B, C], encoder, CPU)
    assert encoder.calls == [[A], [B, C]]
    expected_y, expected_mask = encoder([B, A, B, C])
    assert torch.equal(y, expected_y) and torch.equal(mask, expected_mask)
    cache.encode([C, A, B], encoder, CPU)
    assert len(encoder.calls) == 3  # the check above made the third call; this one made none


def test_least_recently_used_prompt_leaves_first():
    cache, encoder = PromptEmbeddingCache(capacity=2), CountingEncoder()
    cache.encode([A, B], encoder, CPU)
    cache.encode([A], encoder, CPU)  # A is now the most recent
    cache.encode([C], encoder, CPU)  # evicts B
    assert A in cache and C in cache and B not in cache and len(cache) == 2


def test_capacity_zero_turns_it_off_and_negative_is_refused():
    cache, encoder = PromptEmbeddingCache(capacity=0), CountingEncoder()
    cache.encode([A], encoder, CPU)
    cache.encode([A], encoder, CPU)
    assert encoder.calls == [[A], [A]] and len(cache) == 0
    with pytest.raises(ConfigError, match="capacity must be >= 0"):
        PromptEmbeddingCache(capacity=-1)


def test_threads_sharing_a_cache_each_get_their_own_prompts():
    cache, encoder = PromptEmbeddingCache(capacity=3), CountingEncoder()
    prompts = [f"prompt number {i}" for i in range(6)]
    errors = []

    def worker(offset: int):
        try:
            for round_ in range(40):
                batch = [prompts[(offset + round_ + k) % len(prompts)] for k in range(2)]
                y, _ = cache.encode(batch, encoder, CPU)
                if not torch.equal(y, encoder(batch)[0]):
                    errors.append(batch)
        except Exception as err:  # reported below: a thread's exception would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(cache) <= 3


def test_generate_gives_the_same_latents_with_and_without_the_cache(engine):
    kwargs = dict(seed=7, num_steps=3, output="latent", progress=False)
    engine.prompt_cache = PromptEmbeddingCache(capacity=0)
    uncached = engine.generate([A, B], **kwargs)
    engine.prompt_cache = PromptEmbeddingCache()
    engine.generate([B], **kwargs)  # B cached from a batch of its own, A then encoded alone
    assert torch.equal(engine.generate([A, B], **kwargs), uncached)
    assert torch.equal(engine.generate([A, B], **kwargs), uncached)  # both cached
