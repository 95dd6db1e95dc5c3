"""Spatial self-attention: the tokens of each frame attend to each other.

q, k, v [B, H, L, D] -> [B, H, L, D], B = samples*frames, L = S spatial positions. `self_attention_ref`
spells out the maths (the meaning of the op); `self_attention_sdpa` hands it to PyTorch's fused
scaled_dot_product_attention and `self_attention_cudnn` asks that for cuDNN's kernel first, which
runs this shape (S = 256..1024, head_dim 72) fastest on Hopper, faster than flash and than a Triton
flash kernel of ours (BENCHMARKS.md, which is why there is no Triton kernel here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN first; the rest stay as fallbacks for inputs or devices cuDNN does not take (the CPU among them).
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def self_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v


def self_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def self_attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)
