"""Spatial self-attention in Triton: the tokens of each frame attend to each other (S = 256 or
1024 positions, head_dim 72), with flash_attention_triton's kernel.

Meaning: `self_attention_ref` in attention.py, q, k, v [B, H, S, D] -> [B, H, S, D]. The op
`stdit_engine::self_attention` returns the output in token order, a contiguous [B, S, H, D], and
`self_attention_triton` hands it back as the [B, H, S, D] view the Ops contract names, so the
output projection reads it without a copy. The registry picks this kernel or cuDNN's, whichever
benchmarks/test_kernels.py measures faster on the card (registry.py says which and why).
"""
from __future__ import annotations

import torch

from .flash_attention_triton import flash_attention

# Launch shape, the fastest in a sweep on an H200 with the vector loads (BLOCK_N 128, BLOCK_L
# 32 / 64 / 128, 4 / 8 warps, 2-3 stages, split or padded head): 104 us at 16x256x256 and 2.36 ms
# at 64x512x512, against cuDNN's 79 us and 1.96 ms, so the registry keeps cuDNN. Key tiles of 64
# are refused with the split head (flash_attention_triton.py).
BLOCK_N = 128  # queries per program
BLOCK_L = 32  # keys per tile
NUM_WARPS = 4
NUM_STAGES = 3
SPLIT_HEAD = True  # head_dim 72 as 64 + 16, or padded to 128 (which allows longer key tiles)


@torch.library.custom_op("stdit_engine::self_attention", mutates_args=())
def self_attention_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, S, D] (any strides) -> a contiguous [B, S, H, D]."""
    return flash_attention(q, k, v, None, block_n=BLOCK_N, block_l=BLOCK_L, num_warps=NUM_WARPS,
                           num_stages=NUM_STAGES, split_head=SPLIT_HEAD)


@self_attention_tokens.register_fake
def _(q, k, v):
    b, h, n, d = q.shape
    return q.new_empty((b, n, h, d))


def self_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, S, D] -> [B, H, S, D] (a view of the token-order result)."""
    return self_attention_tokens(q, k, v).transpose(1, 2)
