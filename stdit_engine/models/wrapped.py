"""The common face of the library models the engine wraps (transformers T5, diffusers VAE)."""
from __future__ import annotations

import torch
from torch import nn


class WrappedModel:
    """Holds `self.model` (an nn.Module in eval mode) and exposes where and in what dtype it runs."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device):
        self.model.to(device)
        return self
