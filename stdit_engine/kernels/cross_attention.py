"""Caption cross-attention: every video token of a sample attends to that sample's caption.

`cross_attention_ref` is the meaning: q [B, H, N, D] over k, v [B, H, Lc, D] -> [B, N, H, D] (token
order), where sample b sees only its first kv_lengths[b] caption tokens (T5 masks are prefixes).
`cross_attention_sdpa` hands it to PyTorch's fused attention, which takes these lengths only as a
dense mask over all the caption tokens. `cross_attention_direct` launches a flash-style kernel
(`cross_attention_triton` is it as the custom op `stdit_engine::cross_attention`; eager_dispatch.py
says which is called when) that stops at each sample's length, read on the device: a typical
prompt (~20 of T5's 120 tokens) costs one key tile, padding is never loaded, and there is no host
synchronisation (the ops run inside CUDA graphs).

The kernel takes q, k, v as any strided views (the attention module hands in views of its
projections) and returns a contiguous [B, N, H, D], so the output projection reads it without a
copy. One program per (block of BLOCK_N queries, sample, head) walks the keys in tiles of BLOCK_L
with an online softmax in base 2 (qk_scale folds log2(e) into D^-0.5): running row max, row sum and
the weighted sum of V, all fp32. The head dimension is cut into a power-of-two part and a tail of
16 (D = 72 -> 64 + 16, 80 lanes of which 72 are read) rather than padded to the next power of two
(128): tl.dot needs power-of-two tiles, and the padding would be 78% of the tensor-core work at
STDiT's head_dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .alignment import element_alignment
from .triton_support import cdiv, jit, launch, next_power_of_2, tl

# Launch shape: the fastest of a sweep of query blocks, key tiles and warps (BENCHMARKS.md). Key
# tiles of 16 ran a little faster but with many times the rounding error against SDPA (more
# online-softmax rescales).
BLOCK_N = 64  # video tokens per program
BLOCK_L = 32  # caption tokens per tile
NUM_WARPS = 4


def caption_mask(kv_lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Boolean [B, 1, 1, Lc] mask: True where caption token j < kv_lengths[b]."""
    positions = torch.arange(num_tokens, device=kv_lengths.device)
    return (positions[None, :] < kv_lengths[:, None])[:, None, None, :]


def cross_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    scores = scores.masked_fill(~caption_mask(kv_lengths, k.shape[-2]), float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)


def cross_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=caption_mask(kv_lengths, k.shape[-2])).transpose(1, 2)


LOG2_E = 1.4426950408889634
TAIL = 16  # the least tile tl.dot takes
# With the tail tile, key tiles of 64 made an illegal memory access on a GPU (not yet understood;
# 16 and 32 ran and matched): the launcher refuses them.
MAX_BLOCK_L_WITH_TAIL = 32


def head_split(d: int) -> tuple[int, int]:
    """(the power-of-two part of the head dimension, the tail tile after it: 0 or TAIL)."""
    if d <= TAIL:
        return TAIL, 0
    main = 1 << (d.bit_length() - 1)  # the largest power of two <= d
    if main == d:
        return main, 0
    if d - main > TAIL:  # e.g. 100 = 64 + 36: one padded power of two is as cheap as main + tails
        return next_power_of_2(d), 0
    return main, TAIL


@jit
def _load_rows(ptr, rows, row_ok, row_stride, dim, d_stride, D: tl.constexpr, UPCAST: tl.constexpr):
    """A [rows, dims] tile; rows past the end and dims >= D read as 0."""
    tile = tl.load(ptr + rows[:, None] * row_stride + dim[None, :] * d_stride,
                   mask=row_ok[:, None] & (dim < D)[None, :], other=0.0)
    if UPCAST:  # Triton's interpreter computes a bf16 tl.dot on the raw bits (triton-lang/triton#11584)
        tile = tile.to(tl.float32)
    return tile


@jit
def _flash_attention_kernel(
    q_ptr, k_ptr, v_ptr, lengths_ptr, o_ptr, N, H, qk_scale,
    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, so_b, so_h, so_n, so_d,
    D: tl.constexpr, ALIGN: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_TAIL: tl.constexpr, UPCAST: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    sample_head = tl.program_id(1).to(tl.int64)
    b = sample_head // H
    h = sample_head % H
    n_ok = n < N
    length = tl.load(lengths_ptr + b)
    # ALIGN (alignment.py) lets the rows be read 16 bytes at a time; D constexpr makes the masks
    # of the head dimension provably constant over those 16 bytes.
    q_ptr += tl.multiple_of(b * sq_b + h * sq_h, ALIGN)
    k_ptr += tl.multiple_of(b * sk_b + h * sk_h, ALIGN)
    v_ptr += tl.multiple_of(b * sv_b + h * sv_h, ALIGN)
    dim = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, n, n_ok, sq_n, dim, sq_d, D, UPCAST)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if BLOCK_TAIL:
        tail = BLOCK_D + tl.arange(0, BLOCK_TAIL)
        q_tail = _load_rows(q_ptr, n, n_ok, sq_n, tail, sq_d, D, UPCAST)
        acc_tail = tl.zeros([BLOCK_N, BLOCK_TAIL], dtype=tl.float32)

    row_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, length, BLOCK_L):
        j = start + tl.arange(0, BLOCK_L)
        j_ok = j < length
        k = _load_rows(k_ptr, j, j_ok, sk_l, dim, sk_d, D, UPCAST)
        # "ieee" keeps fp32 inputs out of TF32; bf16 / fp16 inputs ignore it (tensor cores, fp32 sums).
        scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        if BLOCK_TAIL:
            k_tail = _load_rows(k_ptr, j, j_ok, sk_l, tail, sk_d, D, UPCAST)
            scores += tl.dot(q_tail, tl.trans(k_tail), input_precision="ieee")
        scores = tl.where(j_ok[None, :], scores * qk_scale, float("-inf"))  # past the keys: no weight
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        rescale = tl.exp2(row_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        row_max = new_max
        v = _load_rows(v_ptr, j, j_ok, sv_l, dim, sv_d, D, UPCAST)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        if BLOCK_TAIL:
            v_tail = _load_rows(v_ptr, j, j_ok, sv_l, tail, sv_d, D, UPCAST)
            acc_tail = acc_tail * rescale[:, None] + tl.dot(p.to(v_tail.dtype), v_tail, input_precision="ieee")

    o_ptr += tl.multiple_of(b * so_b + h * so_h, ALIGN)
    out_mask = n_ok[:, None] & (dim < D)[None, :]
    tl.store(o_ptr + n[:, None] * so_n + dim[None, :] * so_d, (acc / row_sum[:, None]).to(o_ptr.dtype.element_ty),
             mask=out_mask)
    if BLOCK_TAIL:
        tl.store(o_ptr + n[:, None] * so_n + tail[None, :] * so_d,
                 (acc_tail / row_sum[:, None]).to(o_ptr.dtype.element_ty), mask=n_ok[:, None] & (tail < D)[None, :])


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor, *,
                    block_n: int, block_l: int, num_warps: int) -> torch.Tensor:
    """q [B, H, N, D] over the first kv_lengths[b] keys of k, v [B, H, L, D]; a contiguous [B, N, H, D]."""
    if not (q.dim() == k.dim() == v.dim() == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
            and q.shape[3] == k.shape[3]):
        raise ValueError(f"expected q [B, H, N, D] and k, v [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if kv_lengths.shape != q.shape[:1]:
        raise ValueError(f"expected kv_lengths [B] = [{q.shape[0]}], got {tuple(kv_lengths.shape)}")
    b, h, n, d = q.shape
    block_d, block_tail = head_split(d)
    if block_tail and block_l > MAX_BLOCK_L_WITH_TAIL:
        raise ValueError(f"key tiles of {block_l} with head_dim {d} (a {block_d} + {block_tail} split) are not safe: "
                         f"use at most {MAX_BLOCK_L_WITH_TAIL}")
    out = torch.empty((b, n, h, d), dtype=q.dtype, device=q.device)
    if out.numel():
        launch(_flash_attention_kernel, (cdiv(n, block_n), b * h))(
            q, k, v, kv_lengths, out, n, h, d**-0.5 * LOG2_E,
            *q.stride(), *k.stride(), *v.stride(), n * h * d, d, h * d, 1,  # out seen as [B, H, N, D]
            D=d, ALIGN=element_alignment(q, k, v, out),
            BLOCK_N=block_n, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_TAIL=block_tail,
            UPCAST=q.dtype == torch.bfloat16 and q.device.type == "cpu",  # CPU tensors: the interpreter
            num_warps=num_warps,
        )
    return out


def cross_attention_direct(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: torch.Tensor) -> torch.Tensor:
    """q [B, H, N, D] over the first kv_lengths[b] rows of k, v [B, H, L, D]; a contiguous [B, N, H, D]."""
    return flash_attention(q, k, v, kv_lengths, block_n=BLOCK_N, block_l=BLOCK_L, num_warps=NUM_WARPS)


cross_attention_triton = torch.library.custom_op(
    "stdit_engine::cross_attention", cross_attention_direct, mutates_args=())


@cross_attention_triton.register_fake
def _(q, k, v, kv_lengths):
    b, h, n, d = q.shape
    return q.new_empty((b, n, h, d))
