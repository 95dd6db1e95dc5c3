"""GELU with the tanh approximation, the MLP and caption-projection activation of STDiT."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
