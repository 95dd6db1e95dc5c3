"""What the harness runs: an Engine (real weights, the proxy or random ones) on a list of prompts,
or the analytic model on a batch of draws."""
from __future__ import annotations

from typing import Sequence

import torch

from ..schedulers import Sampler
from .analytic import GaussianModel


class EngineRunner:
    """The engine's own denoising loop on `prompts`, seed by seed: the initial latent and every
    later draw come from a generator seeded as `Engine.generate(prompts, seed=...)` seeds it, so a
    run equals that call's latent."""

    def __init__(self, engine, prompts: Sequence[str], decode: bool = True):
        self.engine = engine
        self.y, self.mask = engine.encode_prompts(list(prompts))
        self.y_null = engine.stdit.y_embedder.y_embedding[None, None]
        self.decodes = decode
        self.cache = None  # a step-cache plan for the next denoise calls (engine/step_cache.py)

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.engine.device).manual_seed(seed)

    def _draw_latent(self, generator: torch.Generator) -> torch.Tensor:
        shape = (self.y.shape[0], *self.engine.preset.latent_shape)
        return torch.randn(shape, generator=generator, device=self.engine.device, dtype=self.engine.dtype)

    def initial_noise(self, seed: int) -> torch.Tensor:
        return self._draw_latent(self._generator(seed))

    def denoise(self, sampler: Sampler, z: torch.Tensor, seed: int) -> torch.Tensor:
        generator = self._generator(seed)
        self._draw_latent(generator)  # past the initial latent, as generate() is when sampling starts
        with self.engine.placement.stage("denoise"):
            return self.engine.denoiser.sample(sampler, z, self.y, self.mask, self.y_null, generator=generator,
                                               cache=self.cache)

    def decode(self, latent: torch.Tensor) -> torch.Tensor | None:
        if not self.decodes:
            return None
        with self.engine.placement.stage("decode"):
            return self.engine.vae.decode(latent.to(self.engine.dtype), to_uint8=True)


class AnalyticRunner:
    """The analytic model on `draws` latents per seed (float64, CPU); nothing to decode."""

    def __init__(self, model: GaussianModel, shape: tuple[int, ...], draws: int = 64):
        self.model = model
        self.shape = (draws, *shape)
        self.captions = torch.zeros(draws, 1, 1, 1)

    def initial_noise(self, seed: int) -> torch.Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def denoise(self, sampler: Sampler, z: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + 1)
        return sampler.sample(self.model, z, self.captions, None, self.captions, generator=generator)

    def decode(self, latent: torch.Tensor) -> None:
        return None
