"""The analytic model: data x0 ~ N(mean, std^2), element-wise, with a conditional and an
unconditional mean of the same std. Its eps predictor and its probability-flow ODE are closed form:

    eps(x_t) = sigma * (x_t - alpha * mean) / (alpha^2 std^2 + sigma^2)

and classifier-free guidance eps_u + w (eps_c - eps_u) is exactly the eps of N(mean_g, std^2) with
mean_g = mean_u + w (mean_c - mean_u) on the guided channels (mean_c on the others). Along the ODE the
standardised value u = (x_t - alpha mean_g) / sqrt(alpha^2 std^2 + sigma^2) is constant, so the
exact solution from any start is known, and so is the distribution samplers should produce.
"""
from __future__ import annotations

import numpy as np
import torch

from ..schedulers.base import NUM_TRAIN_STEPS
from ..schedulers.ode import NoiseSchedule


class GaussianModel:
    """Stands in for the STDiT: `model(x, timestep, y, mask)` on the guidance batch [x; x] returns
    the exact eps of the conditional data for the first half of the rows and of the unconditional
    data for the second, then variance values v (channels C..2C-1, `variance_value` everywhere)."""

    def __init__(self, cond_mean: torch.Tensor, uncond_mean: torch.Tensor, std: float, variance_value: float = 0.0):
        self.cond_mean = cond_mean.double()  # [C, T, H, W] or broadcastable to one latent
        self.uncond_mean = uncond_mean.double()
        self.std = float(std)
        self.variance_value = variance_value
        self.schedule = NoiseSchedule()
        self.calls = 0

    def alpha_sigma(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """At the model's timestep input (a discrete step, or between two)."""
        t = (timestep.double().cpu().numpy() + 1) / NUM_TRAIN_STEPS
        alpha, sigma = self.schedule.alpha_sigma(t)
        return torch.from_numpy(alpha), torch.from_numpy(sigma)

    def eps(self, x: torch.Tensor, alpha, sigma, mean: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha, sigma = alpha.view(shape), sigma.view(shape)
        return sigma * (x.double() - alpha * mean) / (alpha ** 2 * self.std ** 2 + sigma ** 2)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, y, mask) -> torch.Tensor:
        self.calls += 1
        n = x.shape[0] // 2
        alpha, sigma = self.alpha_sigma(timestep)
        eps = torch.cat([self.eps(x[:n], alpha[:n], sigma[:n], self.cond_mean),
                         self.eps(x[n:], alpha[n:], sigma[n:], self.uncond_mean)])
        return torch.cat([eps, torch.full_like(eps, self.variance_value)], dim=1).to(x.dtype)

    def guided_mean(self, cfg_scale: float, guidance_channels: int) -> torch.Tensor:
        mean = self.cond_mean.clone()
        guided = self.uncond_mean + cfg_scale * (self.cond_mean - self.uncond_mean)
        mean[:guidance_channels] = guided[:guidance_channels]
        return mean

    def ode_solution(self, z: torch.Tensor, cfg_scale: float, guidance_channels: int,
                     t_start: float = 1.0, t_end: float = 1.0 / NUM_TRAIN_STEPS) -> torch.Tensor:
        """Where the guided probability-flow ODE takes z (at t_start) by t_end, exactly (float64)."""
        mean = self.guided_mean(cfg_scale, guidance_channels)
        (a0, a1), (s0, s1) = self.schedule.alpha_sigma(np.array([t_start, t_end]))
        u = (z.double() - a0 * mean) / np.sqrt(a0 ** 2 * self.std ** 2 + s0 ** 2)
        return a1 * mean + np.sqrt(a1 ** 2 * self.std ** 2 + s1 ** 2) * u

    def end_distribution(self, cfg_scale: float, guidance_channels: int,
                         t_end: float = 1.0 / NUM_TRAIN_STEPS) -> tuple[torch.Tensor, float]:
        """Mean and std of the guided data as it is at t_end (a trace of noise at step 0)."""
        alpha, sigma = self.schedule.alpha_sigma(np.array(t_end))
        return alpha * self.guided_mean(cfg_scale, guidance_channels), float(np.sqrt(alpha ** 2 * self.std ** 2 + sigma ** 2))
