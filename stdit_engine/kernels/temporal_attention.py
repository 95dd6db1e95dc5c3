"""Temporal attention: self-attention over the T frames (1..64) of each sample, spatial position
and head, read from and written to tokens in their natural [B, T, S, C] order.

`temporal_attention_ref` is the meaning: softmax(q k^T * D^-0.5) v on q, k, v [B, S, H, T, D] ->
out [B, T, S, H, D]; `temporal_attention_sdpa` hands it to PyTorch's fused attention (after a
gathering copy). `temporal_attention_direct` launches the kernel, `temporal_attention_triton` is it
as the custom op `stdit_engine::temporal_attention` (eager_dispatch.py says which is called when); it
takes q, k, v as any strided views (SelfAttention.over_frames hands in permuted views of the qkv
projection of [B, T, S, C] tokens) and writes the output in token order, so neither side of the
op needs a transpose copy. One program per (sample, position, head) holds the whole T x D tiles:
T is padded to a power of two >= 16 (the least tl.dot takes), D (72 in STDiT) to a power of two
>= 16, with masks; the scores, the softmax and both products accumulate in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .alignment import element_alignment
from .self_attention import self_attention_ref
from .triton_support import jit, launch, next_power_of_2, tl

MAX_LEN = 64  # the whole T x T score tile lives in registers: longer sequences want a flash kernel
# Warps per program by the padded frame count: the fastest of benchmarks/probes/launch_sweep.py
# (BENCHMARKS.md); 32 frames, not timed, between its neighbours.
WARPS_BY_TILE = {16: 1, 32: 2, 64: 4}


@jit
def _temporal_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, S, H, T, sm_scale,
    sq_b, sq_s, sq_h, sq_t, sq_d, sk_b, sk_s, sk_h, sk_t, sk_d,
    sv_b, sv_s, sv_h, sv_t, sv_d, so_b, so_s, so_h, so_t, so_d,
    D: tl.constexpr, ALIGN: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // (S * H)
    s = (pid // H) % S
    h = pid % H
    t = tl.arange(0, BLOCK_T)
    dim = tl.arange(0, BLOCK_D)
    t_ok = t < T
    mask = t_ok[:, None] & (dim < D)[None, :]
    # ALIGN (alignment.py) lets the rows be read 16 bytes at a time; D constexpr makes the mask
    # provably constant over those 16 bytes.
    q_ptr += tl.multiple_of(b * sq_b + s * sq_s + h * sq_h, ALIGN)
    k_ptr += tl.multiple_of(b * sk_b + s * sk_s + h * sk_h, ALIGN)
    v_ptr += tl.multiple_of(b * sv_b + s * sv_s + h * sv_h, ALIGN)
    q = tl.load(q_ptr + t[:, None] * sq_t + dim[None, :] * sq_d, mask=mask, other=0.0)
    k = tl.load(k_ptr + t[:, None] * sk_t + dim[None, :] * sk_d, mask=mask, other=0.0)
    v = tl.load(v_ptr + t[:, None] * sv_t + dim[None, :] * sv_d, mask=mask, other=0.0)
    if UPCAST:  # Triton's interpreter computes a bf16 tl.dot on the raw bits (triton-lang/triton#11584)
        q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)

    # "ieee" keeps fp32 inputs out of TF32; bf16 / fp16 inputs ignore it (tensor cores, fp32 sums).
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
    scores = tl.where(t_ok[None, :], scores, float("-inf"))  # padded keys get no weight
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])  # padded query rows stay finite: never stored
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee") / tl.sum(p, axis=1)[:, None]
    o_ptr += tl.multiple_of(b * so_b + s * so_s + h * so_h, ALIGN)
    tl.store(
        o_ptr + t[:, None] * so_t + dim[None, :] * so_d,
        o.to(o_ptr.dtype.element_ty), mask=mask,
    )


def temporal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return self_attention_ref(q, k, v).permute(0, 3, 1, 2, 4)


def temporal_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, s, h, t, d = q.shape
    # The fused kernels take one batch axis: samples x positions, gathered into one (a copy).
    out = F.scaled_dot_product_attention(*(z.reshape(b * s, h, t, d) for z in (q, k, v)))
    return out.view(b, s, h, t, d).permute(0, 3, 1, 2, 4)


def _token_order_strides(t: int, s: int, h: int, d: int) -> tuple[int, ...]:
    """The strides of a contiguous [B, T, S, H, D] output seen as [B, S, H, T, D], the kernel's
    order (the permuted view's strides, without building the view on every call)."""
    return t * s * h * d, h * d, d, s * h * d, 1


def temporal_attention_direct(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention over T of q, k, v [B, S, H, T, D] (any strides), returned as a contiguous [B, T, S, H, D]."""
    if not (q.dim() == 5 and q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have one shape [B, S, H, T, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, s, h, t, d = q.shape
    if t > MAX_LEN:
        raise ValueError(f"temporal_attention_triton takes at most {MAX_LEN} frames, got {t}: use the sdpa backend")
    out = torch.empty((b, t, s, h, d), dtype=q.dtype, device=q.device)
    block_t = max(16, next_power_of_2(t))
    if out.numel():
        launch(_temporal_attention_kernel, (b * s * h,))(
            q, k, v, out, s, h, t, d**-0.5,
            *q.stride(), *k.stride(), *v.stride(), *_token_order_strides(t, s, h, d),
            D=d, ALIGN=element_alignment(q, k, v, out), BLOCK_T=block_t, BLOCK_D=max(16, next_power_of_2(d)),
            UPCAST=q.dtype == torch.bfloat16 and q.device.type == "cpu",  # CPU tensors: the interpreter
            num_warps=WARPS_BY_TILE[block_t],
        )
    return out


temporal_attention_triton = torch.library.custom_op(
    "stdit_engine::temporal_attention", temporal_attention_direct, mutates_args=())


@temporal_attention_triton.register_fake
def _(q, k, v):
    b, s, h, t, d = q.shape
    return q.new_empty((b, t, s, h, d))
