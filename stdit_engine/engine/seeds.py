"""Seeds, and the generators that draw a call's random numbers (the initial latent and each step's noise).

`seed` an int (or None) keeps the reference script's protocol: one generator for the whole call,
drawing each tensor for the whole batch at once, so that batches continue one stream. `seed` a
list gives every prompt its own generator, and each draw of the batch is assembled from per-prompt
draws of exactly the shape a one-prompt call makes: prompt i then gets the numbers of
`generate([prompts[i]], seed=seed[i])`, whatever it is batched with.
"""
from __future__ import annotations

import secrets

import torch

# Seeds a service hands out and accepts: 0..MAX_SEED. JSON clients (every browser, many libraries)
# read numbers as doubles, which hold integers exactly only up to 2**53: a larger seed shown on a
# web page or sent back from one would name another video.
MAX_SEED = 2**53 - 1


def new_seed() -> int:
    """A fresh seed in 0..MAX_SEED, for a request that came without one (report it, so it can be replayed)."""
    return secrets.randbelow(MAX_SEED + 1)


class SharedNoise:
    """One generator for the whole call (an int seed), or torch's global one (None)."""

    def __init__(self, seed: int | None, device: torch.device):
        self.generator = None if seed is None else torch.Generator(device).manual_seed(seed)

    def batch(self, start: int, stop: int) -> "SharedNoise":
        return self  # later batches continue the same stream, as the reference's loop does

    def draw(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype, device=device)


class PromptNoise:
    """One generator per prompt. A draw of `shape` for n prompts has shape[0] = k * n rows laid out
    as k blocks of n (the guidance batch [cond rows; uncond rows] has k = 2): prompt i draws its own
    k rows, as a one-prompt call draws them, and they go to rows i, n + i, ... of the batch's draw."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def batch(self, start: int, stop: int) -> "PromptNoise":
        return PromptNoise(self.generators[start:stop])

    def draw(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        prompts = len(self.generators)
        rows, remainder = divmod(shape[0], prompts)
        if remainder:
            raise ValueError(f"a draw of {shape[0]} rows cannot be split over {prompts} prompts")
        draws = [torch.randn((rows, *shape[1:]), generator=g, dtype=dtype, device=device) for g in self.generators]
        return torch.stack(draws, dim=1).reshape(shape)


def call_noise(seed: int | list[int] | None, device: torch.device) -> SharedNoise | PromptNoise:
    """The random source of one `generate()` call, from its checked seed (engine/arguments.py)."""
    if isinstance(seed, list):
        return PromptNoise([torch.Generator(device).manual_seed(s) for s in seed])
    return SharedNoise(seed, device)
