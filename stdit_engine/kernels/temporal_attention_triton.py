"""Self-attention over a short sequence in Triton: STDiT's temporal attention (L = frames, 1..64).

Meaning: `self_attention_ref` in attention.py, softmax(q k^T * D^-0.5) v on q, k, v [B, H, L, D].
q, k, v may be any strided views (SelfAttention.forward hands in permuted views of the qkv
projection). One program per (batch row, head) holds the whole L x D tiles: L is padded to a power
of two >= 16 (the least tl.dot takes), D (72 in STDiT) to a power of two >= 16, with masks; the
scores, the softmax and both products accumulate in fp32.

Layout: the custom op `stdit_engine::temporal_attention` (`temporal_attention_blhd`) returns a
fresh contiguous [B, L, H, D] tensor; `temporal_attention_triton` returns it as its [B, H, L, D]
`.transpose(1, 2)` view, so the caller's `out.transpose(1, 2).reshape(b, n, c)` copies nothing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_LEN = 64  # the whole L x L score tile lives in registers: longer sequences want a flash kernel


@triton.jit
def _temporal_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, H, L, D, sm_scale,
    sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, so_b, so_h, so_l, so_d,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    pos = tl.arange(0, BLOCK_L)
    dim = tl.arange(0, BLOCK_D)
    pos_ok = pos < L
    mask = pos_ok[:, None] & (dim < D)[None, :]
    q = tl.load(q_ptr + b * sq_b + h * sq_h + pos[:, None] * sq_l + dim[None, :] * sq_d, mask=mask, other=0.0)
    k = tl.load(k_ptr + b * sk_b + h * sk_h + pos[:, None] * sk_l + dim[None, :] * sk_d, mask=mask, other=0.0)
    v = tl.load(v_ptr + b * sv_b + h * sv_h + pos[:, None] * sv_l + dim[None, :] * sv_d, mask=mask, other=0.0)
    if UPCAST:  # Triton's interpreter computes a bf16 tl.dot on the raw bits (triton-lang/triton#11584)
        q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)

    # "ieee" keeps fp32 inputs out of TF32; bf16 / fp16 inputs ignore it (tensor cores, fp32 sums).
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
    s = tl.where(pos_ok[None, :], s, float("-inf"))  # padded keys get no weight
    p = tl.exp(s - tl.max(s, axis=1)[:, None])  # padded query rows stay finite: never stored
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee") / tl.sum(p, axis=1)[:, None]
    tl.store(
        o_ptr + b * so_b + h * so_h + pos[:, None] * so_l + dim[None, :] * so_d,
        o.to(o_ptr.dtype.element_ty), mask=mask,
    )


@torch.library.custom_op("stdit_engine::temporal_attention", mutates_args=())
def temporal_attention_blhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of q, k, v [B, H, L, D] (any strides), returned as a contiguous [B, L, H, D]."""
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q, k, v must have one shape [B, H, L, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, h, seq, d = q.shape
    if seq > MAX_LEN:
        raise ValueError(f"temporal_attention_triton takes sequences of at most {MAX_LEN}, got {seq}: use the sdpa backend")
    out = torch.empty((b, seq, h, d), dtype=q.dtype, device=q.device)
    if out.numel():
        _temporal_attention_kernel[(b * h,)](
            q, k, v, out, h, seq, d, d**-0.5,
            *q.stride(), *k.stride(), *v.stride(), *out.transpose(1, 2).stride(),
            BLOCK_L=max(16, triton.next_power_of_2(seq)), BLOCK_D=max(16, triton.next_power_of_2(d)),
            UPCAST=q.dtype == torch.bfloat16 and q.device.type == "cpu",  # CPU tensors: the interpreter
            num_warps=4,
        )
    return out


@temporal_attention_blhd.register_fake
def _(q, k, v):
    b, h, seq, d = q.shape
    return q.new_empty((b, seq, h, d))


def temporal_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """self_attention(q, k, v) -> [B, H, L, D], a transposed view of a contiguous [B, L, H, D]."""
    return temporal_attention_blhd(q, k, v).transpose(1, 2)
