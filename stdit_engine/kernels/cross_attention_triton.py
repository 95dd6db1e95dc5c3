"""Caption cross-attention in Triton: every video token of a sample attends to that sample's caption.

Meaning: `cross_attention_ref` in attention.py: softmax(q k^T * D^-0.5) v per (sample, head), over
the first kv_lengths[b] caption tokens only, on q [B, H, N, D] and k, v [B, H, L, D] (any strided
views: CrossAttention hands in views of its projections) -> out [B, N, H, D], written in token
order so the output projection reads it without a copy.

The caption is short (T5's 120 tokens at most), so a program holds the whole caption's K and V in
one tile and needs no online softmax: one program per (block of BLOCK_N tokens, sample, head).
Caption tokens past the sample's length are neither loaded nor weighted, and the length stays on
the device (no host synchronisation, so the op runs inside CUDA graphs). PyTorch's SDPA takes the
same lengths only as a dense mask and runs this at ~8x the memory floor (benchmarks/test_kernels.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_CAPTION = 128  # the whole caption sits in one register tile; longer ones want a flash kernel
BLOCK_N = 64  # video tokens per program
NUM_WARPS = 4


@triton.jit
def _cross_attention_kernel(
    q_ptr, k_ptr, v_ptr, lengths_ptr, o_ptr, N, H, D, sm_scale,
    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, so_b, so_h, so_n, so_d,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    sample_head = tl.program_id(1).to(tl.int64)
    b = sample_head // H
    h = sample_head % H
    j = tl.arange(0, BLOCK_L)
    dim = tl.arange(0, BLOCK_D)
    n_ok = n < N
    j_ok = j < tl.load(lengths_ptr + b)
    d_ok = dim < D
    q = tl.load(q_ptr + b * sq_b + h * sq_h + n[:, None] * sq_n + dim[None, :] * sq_d,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    kv_mask = j_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + b * sk_b + h * sk_h + j[:, None] * sk_l + dim[None, :] * sk_d, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b * sv_b + h * sv_h + j[:, None] * sv_l + dim[None, :] * sv_d, mask=kv_mask, other=0.0)
    if UPCAST:  # Triton's interpreter computes a bf16 tl.dot on the raw bits (triton-lang/triton#11584)
        q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)

    # "ieee" keeps fp32 inputs out of TF32; bf16 / fp16 inputs ignore it (tensor cores, fp32 sums).
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
    scores = tl.where(j_ok[None, :], scores, float("-inf"))  # caption padding gets no weight
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee") / tl.sum(p, axis=1)[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + n[:, None] * so_n + dim[None, :] * so_d,
             o.to(o_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


@torch.library.custom_op("stdit_engine::cross_attention", mutates_args=())
def cross_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    """q [B, H, N, D] over the first kv_lengths[b] rows of k, v [B, H, L, D]; a contiguous [B, N, H, D]."""
    if not (q.dim() == k.dim() == v.dim() == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
            and q.shape[3] == k.shape[3] and kv_lengths.shape == q.shape[:1]):
        raise ValueError(f"expected q [B, H, N, D], k and v [B, H, L, D] and kv_lengths [B]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(kv_lengths.shape)}")
    b, h, n, d = q.shape
    if k.shape[2] > MAX_CAPTION:
        raise ValueError(f"cross_attention_triton takes captions of at most {MAX_CAPTION} tokens, got {k.shape[2]}: "
                         "use the sdpa backend")
    out = torch.empty((b, n, h, d), dtype=q.dtype, device=q.device)
    if out.numel():
        _cross_attention_kernel[(triton.cdiv(n, BLOCK_N), b * h)](
            q, k, v, kv_lengths, out, n, h, d, d**-0.5,
            *q.stride(), *k.stride(), *v.stride(), *out.transpose(1, 2).stride(),
            BLOCK_N=BLOCK_N, BLOCK_L=max(16, triton.next_power_of_2(k.shape[2])),
            BLOCK_D=max(16, triton.next_power_of_2(d)),
            UPCAST=q.dtype == torch.bfloat16 and q.device.type == "cpu",  # CPU tensors: the interpreter
            num_warps=NUM_WARPS,
        )
    return out


@cross_attention_triton.register_fake
def _(q, k, v, kv_lengths):
    b, h, n, d = q.shape
    return q.new_empty((b, n, h, d))
