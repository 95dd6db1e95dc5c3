"""IDDPM sampling with classifier-free guidance, as the Open-Sora v1.0 reference does it (SPEC section 3).

Quantities are computed in float64 and, like the reference, cast to float32 when they are applied,
so a float32/float16 latent is updated in float32. The noise follows the reference script's RNG
protocol exactly: one draw of the full guidance-batch shape (2n rows) per step, in the current
latent's dtype, of which rows 0..n-1 are used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import NUM_TRAIN_STEPS, Sampler, guide, linear_betas, upload

__all__ = ["IDDPM", "SpacedSchedule", "coefficient_table", "guide", "p_sample_step", "respaced_timesteps"]


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


# Columns of the per-index coefficient table (float32, as the reference applies its float64
# quantities). NONZERO is 0 at index 0, where no noise is added.
LOG_BETA, POST_LOG_VAR, SQRT_RECIP, SQRT_RECIPM1, MEAN_COEF1, MEAN_COEF2, NONZERO = range(7)


def coefficient_table(schedule: SpacedSchedule, device: torch.device | str = "cpu") -> torch.Tensor:
    """[num_steps, 7] float32 on `device`, columns as named above: one row per spaced index."""
    columns = [schedule.log_betas, schedule.posterior_log_variance_clipped, schedule.sqrt_recip_alphas_cumprod,
               schedule.sqrt_recipm1_alphas_cumprod, schedule.posterior_mean_coef1, schedule.posterior_mean_coef2,
               (np.arange(len(schedule)) != 0).astype(np.float64)]
    return upload(np.stack(columns, axis=1).astype(np.float32), device)


def p_sample_step(coefs: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step with the coefficient row `coefs` [7]: returns (x_{t-1}, predicted x0).

    model_output has 2C channels: eps, then the variance interpolation value v in [-1, 1]. Pure
    tensor arithmetic (no host branch), so it can be captured in a CUDA graph.
    """
    # The reference's coefficients are full float32 tensors, so a half-precision x or model output
    # is promoted: the update runs in float32 (float64 stays float64). frac is formed before that.
    work = torch.promote_types(x.dtype, torch.float32)
    channels = x.shape[1]
    eps, v = model_output[:, :channels].to(work), model_output[:, channels:]
    frac = ((v + 1) / 2).to(work)
    coefs, x = coefs.to(work), x.to(work)
    log_variance = frac * coefs[LOG_BETA] + (1 - frac) * coefs[POST_LOG_VAR]
    pred_x0 = coefs[SQRT_RECIP] * x - coefs[SQRT_RECIPM1] * eps
    mean = coefs[MEAN_COEF1] * pred_x0 + coefs[MEAN_COEF2] * x
    return mean + coefs[NONZERO] * torch.exp(0.5 * log_variance) * noise.to(work), pred_x0


class IDDPM(Sampler):
    """The reference sampler: learned-variance ancestral steps over the respaced schedule."""

    name = "iddpm"
    min_steps = 2  # the schedule clips the zero variance of its last step to that of the step before

    def __init__(self, num_steps: int = 100, cfg_scale: float = 7.0, guidance_channels: int | None = None):
        super().__init__(num_steps, cfg_scale, guidance_channels)
        self.schedule = SpacedSchedule.build(num_steps)

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        """The original training timestep of each spaced index, as float, indexed by spaced index."""
        return upload(self.schedule.timestep_map.astype(np.float32), device)

    def coefficient_table(self, device: torch.device) -> torch.Tensor:
        return coefficient_table(self.schedule, device)

    def step_rows(self) -> range:
        """Spaced indices from the last to 0."""
        return range(self.num_steps - 1, -1, -1)

    def update(self, coefs, x, model_output, noise, memory):
        return p_sample_step(coefs, x, model_output, noise)[0]
