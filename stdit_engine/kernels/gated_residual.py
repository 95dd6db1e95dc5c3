"""Gated residual: x + gate * y with a per-sample gate [B, C] broadcast over the tokens of x [B, N, C];
and the same followed by the next sub-block's modulated LayerNorm, which the fast backend fuses."""
from __future__ import annotations

import torch

from .ln_modulate import ln_modulate_ref


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + gate[:, None] * y


def gated_residual_ln_modulate_ref(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                   scale: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(new_x, LN(new_x) * (1 + scale) + shift) with new_x = x + gate * y, or x + y if gate is None."""
    new_x = x + y if gate is None else gated_residual_ref(x, gate, y)
    return new_x, ln_modulate_ref(new_x, shift, scale, eps)
