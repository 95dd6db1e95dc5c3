"""Attention in the layouts STDiT uses.

self-attention (spatial): q, k, v [B, H, L, D] -> [B, H, L, D], B = samples*frames, L = S.
temporal attention: q, k, v [B, S, H, T, D] -> [B, T, S, H, D]: over the T frames of each sample,
spatial position and head, read from and written to tokens in their [B, T, S, C] order.
cross-attention: q [B, H, N, D] over k, v [B, H, Lc, D] -> [B, N, H, D], where sample b sees only
its first kv_lengths[b] caption tokens (T5 masks are prefixes); the output is in token order.
The `_ref` functions spell out the maths (the meaning of each op); the `_sdpa` ones hand it to
PyTorch's fused scaled_dot_product_attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN's fused attention runs STDiT's spatial attention (S = 256..1024, head_dim 72) 1.4x faster
# than flash on Hopper (benchmarks/test_kernels.py); the rest stay as fallbacks for inputs or
# devices cuDNN does not take (the CPU among them).
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def self_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v


def caption_mask(kv_lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Boolean [B, 1, 1, Lc] mask: True where caption token j < kv_lengths[b]."""
    positions = torch.arange(num_tokens, device=kv_lengths.device)
    return (positions[None, :] < kv_lengths[:, None])[:, None, None, :]


def cross_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    scores = scores.masked_fill(~caption_mask(kv_lengths, k.shape[-2]), float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)


def temporal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return self_attention_ref(q, k, v).permute(0, 3, 1, 2, 4)


def temporal_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, s, h, t, d = q.shape
    # The fused kernels take one batch axis: samples x positions, gathered into one (a copy).
    out = F.scaled_dot_product_attention(*(z.reshape(b * s, h, t, d) for z in (q, k, v)))
    return out.view(b, s, h, t, d).permute(0, 3, 1, 2, 4)


def self_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def self_attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


def cross_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=caption_mask(kv_lengths, k.shape[-2])).transpose(1, 2)
