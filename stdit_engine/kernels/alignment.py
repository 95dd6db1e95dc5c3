"""Vector loads from strided views: how far a launcher can vouch for a kernel's addresses.

Triton loads 16 bytes per instruction only where it can prove the addresses aligned, and it learns
alignment from the integer arguments divisible by 16. STDiT's per-head offsets are multiples of
head_dim = 72 elements (8 of them: 16 bytes in half precision) but not of 16, so without help every
attention kernel reads its q, k, v rows two bytes at a time. The launcher checks the real pointers
and strides here and passes the element multiple it found; the kernel asserts it with
tl.multiple_of on its per-(sample, head) offsets.
"""
from __future__ import annotations

import math

import torch

VECTOR_BYTES = 16  # the widest global load a GPU thread issues


def element_alignment(*tensors: torch.Tensor) -> int:
    """The largest power of two n <= 16 bytes / itemsize such that every tensor starts at a multiple
    of n elements and all its strides but the last are multiples of n; 1 if any last dimension is
    not contiguous (the rows are then gathered element by element anyway)."""
    n = VECTOR_BYTES // max(t.element_size() for t in tensors)
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % t.element_size():
            return 1
        # n stays a power of two: its gcd with anything is the largest power of two dividing both.
        n = math.gcd(n, t.data_ptr() // t.element_size(), *t.stride()[:-1])
    return n
