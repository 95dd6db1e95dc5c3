"""IDDPM sampling with classifier-free guidance, as the Open-Sora v1.0 reference does it (SPEC section 3).

Quantities are computed in float64 and, like the reference, cast to float32 when they are applied,
so a float32/float16 latent is updated in float32. The noise follows the reference script's RNG
protocol exactly: one draw of the full guidance-batch shape (2n rows) per step, in the current
latent's dtype, of which rows 0..n-1 are used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, SamplingError

NUM_TRAIN_STEPS = 1000
NAN_CHECK_EVERY = 10  # steps between host checks for a non-finite latent (each check syncs)


def linear_betas(num_train_steps: int = NUM_TRAIN_STEPS) -> np.ndarray:
    scale = 1000 / num_train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_train_steps, dtype=np.float64)


def respaced_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """The kept training steps for a single section of `num_steps` evenly spaced steps.

    Accumulates the float stride and rounds (Python's round-half-even), exactly as the reference.
    """
    if num_steps == 1:
        return [0]
    stride = (num_train_steps - 1) / (num_steps - 1)
    kept, position = [], 0.0
    for _ in range(num_steps):
        kept.append(round(position))
        position += stride
    return kept


@dataclass(frozen=True)
class SpacedSchedule:
    """Per-index coefficients of the respaced diffusion process (all float64 numpy arrays)."""

    timestep_map: np.ndarray
    betas: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    log_betas: np.ndarray

    @classmethod
    def build(cls, num_steps: int, num_train_steps: int = NUM_TRAIN_STEPS) -> "SpacedSchedule":
        base_cumprod = np.cumprod(1.0 - linear_betas(num_train_steps))
        kept = respaced_timesteps(num_train_steps, num_steps)
        # The spaced process keeps the cumulative alphas of the kept steps and re-derives its betas.
        cumprod_kept = base_cumprod[kept]
        betas = 1.0 - cumprod_kept / np.append(1.0, cumprod_kept[:-1])
        alphas = 1.0 - betas
        cumprod = np.cumprod(alphas)
        cumprod_prev = np.append(1.0, cumprod[:-1])
        posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
        return cls(
            timestep_map=np.asarray(kept, dtype=np.int64),
            betas=betas,
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / cumprod - 1.0),
            posterior_mean_coef1=betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
            posterior_mean_coef2=(1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
            # The variance at index 0 is 0; the reference clips its log to that of index 1.
            posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            log_betas=np.log(betas),
        )

    def __len__(self) -> int:
        return len(self.timestep_map)


def _coef(arr: np.ndarray, index: int, x: torch.Tensor) -> torch.Tensor:
    """One coefficient as a float32 scalar tensor on x's device, as the reference applies them."""
    return torch.tensor(arr[index], dtype=torch.float32, device=x.device)


def p_sample_step(schedule: SpacedSchedule, index: int, x: torch.Tensor, model_output: torch.Tensor,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step from spaced index `index`: returns (x_{t-1}, predicted x0).

    model_output has 2C channels: eps, then the variance interpolation value v in [-1, 1].
    """
    channels = x.shape[1]
    eps, v = model_output[:, :channels], model_output[:, channels:]
    frac = (v + 1) / 2
    log_variance = frac * _coef(schedule.log_betas, index, x) + (1 - frac) * _coef(schedule.posterior_log_variance_clipped, index, x)
    pred_x0 = _coef(schedule.sqrt_recip_alphas_cumprod, index, x) * x - _coef(schedule.sqrt_recipm1_alphas_cumprod, index, x) * eps
    mean = _coef(schedule.posterior_mean_coef1, index, x) * pred_x0 + _coef(schedule.posterior_mean_coef2, index, x) * x
    if index == 0:  # the last step adds no noise
        return mean, pred_x0
    return mean + torch.exp(0.5 * log_variance) * noise, pred_x0


def guide(model_output: torch.Tensor, cfg_scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance on a [cond; uncond] batch -> the n guided rows.

    eps channels < `channels` become uncond + s*(cond - uncond); the other channels (the rest of
    eps and the variance values) are the conditional half's, unchanged.
    """
    cond, uncond = model_output.chunk(2)
    guided = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]


class IDDPM:
    def __init__(self, num_steps: int = 100, cfg_scale: float = 7.0, guidance_channels: int = 3):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if num_steps > NUM_TRAIN_STEPS:
            raise ConfigError(f"num_steps must be at most {NUM_TRAIN_STEPS} (the training steps), got {num_steps}")
        if not math.isfinite(cfg_scale):
            raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r} (the reference uses 7.0)")
        if guidance_channels not in (3, 4):
            raise ConfigError(
                f"guidance_channels must be 3 (the released v1.0 sampler) or 4 (all latent channels), got {guidance_channels!r}"
            )
        self.num_steps = num_steps
        self.cfg_scale = float(cfg_scale)
        self.guidance_channels = guidance_channels
        self.schedule = SpacedSchedule.build(num_steps)

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        """The original training timestep of each spaced index, as float, indexed by spaced index."""
        return torch.from_numpy(self.schedule.timestep_map).to(device=device, dtype=torch.float32)

    def sample(self, model: Model, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
               y_null: torch.Tensor, generator: torch.Generator | None = None,
               progress: Callable | bool = False, noise_fn: NoiseFn | None = None) -> torch.Tensor:
        """Denoise z [n, C, T, H, W] under caption y [n, 1, L, Cc]; returns the final latent [n, ...].

        `model(x, timestep, y, mask)` is the STDiT forward; it is called on the guidance batch
        [x; x] with captions [y; y_null] and the mask of the n conditional rows.
        `progress`: True for a tqdm bar, or a callable wrapping the step iterable.
        `noise_fn(shape, dtype, device)` replaces the per-step draw from `generator` (for replaying
        recorded noise); it must return the full 2n-row noise.
        """
        n = z.shape[0]
        if y.shape[0] != n:
            raise ConfigError(f"{y.shape[0]} captions for {n} latents")
        captions = torch.cat([y, y_null.expand_as(y).to(y.dtype)])
        timesteps = self.model_timesteps(z.device)
        noise_shape = (2 * n, *z.shape[1:])
        nonfinite_at = torch.full((), -1, dtype=torch.long, device=z.device)  # first bad step, on device

        steps = list(enumerate(range(self.num_steps - 1, -1, -1)))
        x = z
        for step, index in _wrap_progress(steps, progress):
            model_output = model(torch.cat([x, x]), timesteps[index].expand(2 * n), captions, mask)
            guided = guide(model_output, self.cfg_scale, self.guidance_channels)
            if noise_fn is None:
                noise = torch.randn(noise_shape, dtype=x.dtype, device=x.device, generator=generator)
            else:
                noise = noise_fn(noise_shape, x.dtype, x.device)
            x, _ = p_sample_step(self.schedule, index, x, guided, noise[:n])
            # Record the first non-finite step without a host sync; look at it only now and then.
            bad_now = (nonfinite_at < 0) & ~torch.isfinite(x).all()
            nonfinite_at = torch.where(bad_now, torch.tensor(step, device=x.device), nonfinite_at)
            if (step + 1) % NAN_CHECK_EVERY == 0 or step == len(steps) - 1:
                _raise_if_nonfinite(int(nonfinite_at), self.num_steps)
        return x


def _raise_if_nonfinite(step: int, num_steps: int) -> None:
    if step >= 0:
        raise SamplingError(
            f"the latent became NaN/inf at sampling step {step + 1} of {num_steps}; this usually means "
            "fp16 overflow (try dtype=torch.bfloat16 or float32) or a corrupt checkpoint"
        )


def _wrap_progress(steps: list, progress: Callable | bool):
    if callable(progress):
        return progress(steps)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(steps, desc="denoise", unit="step")
    return steps
