"""The VAE's output as pixels: [-1, 1] floats to uint8 frames, as the reference's save_sample makes them.
Used by the VAE's decode (models/vae.py) and by `Video` (engine/video.py)."""
from __future__ import annotations

import torch


def quantize_frames(x: torch.Tensor) -> torch.Tensor:
    """VAE output [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] on x's device, as the
    reference's save_sample computes them, in x's own dtype."""
    x = (x.clamp(-1, 1) + 1) / 2
    x = (x * 255 + 0.5).clamp(0, 255)
    # uint8 conversion truncates toward zero, so +0.5 makes it round to nearest.
    return x.permute(1, 2, 3, 0).to(torch.uint8).contiguous()
