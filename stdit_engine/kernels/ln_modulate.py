"""Modulated LayerNorm: LN(x) * (1 + scale) + shift, the adaLN-single modulation of STDiT.

x is [B, N, C]; shift and scale are per-sample [B, C] and broadcast over the N tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + scale[:, None]) + shift[:, None]
