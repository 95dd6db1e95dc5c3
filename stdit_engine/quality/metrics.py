"""Distances between a run and its reference on the same initial noise: latent relative L2, and
PSNR / SSIM of decoded uint8 frames (peak 255)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the usual Gaussian window of Wang et al. 2004
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| over the whole tensor (float64)."""
    x, reference = x.double().cpu(), reference.double().cpu()
    return float((x - reference).norm() / reference.norm())


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames against the reference's; inf when identical."""
    mse = float((frames.double() - reference.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ssim(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM of uint8 frames [..., H, W, 3] against the reference's, per colour channel."""
    def planes(x: torch.Tensor) -> torch.Tensor:  # [N, 1, H, W] float64, one plane per frame and channel
        x = x.reshape(-1, *x.shape[-3:]).double()
        return x.permute(0, 3, 1, 2).reshape(-1, 1, *x.shape[1:3])

    a, b = planes(frames.cpu()), planes(reference.cpu())
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(x):
        return F.conv2d(x, window)  # valid region only, as the reference implementation crops

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(index.mean())
