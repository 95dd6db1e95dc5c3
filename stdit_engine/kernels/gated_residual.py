"""Gated residual: x + gate * y with a per-sample gate [B, C] broadcast over the tokens of x [B, N, C]."""
from __future__ import annotations

import torch


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + gate[:, None] * y
