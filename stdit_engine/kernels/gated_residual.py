"""Gated residual: x + gate * y with a per-sample gate [B, C] broadcast over the tokens of x [B, N, C];
alone, or fused with the next sub-block's modulated LayerNorm.

References (the meaning of each op), then the Triton kernel, its launchers (`*_direct`) and their
custom ops (`*_triton`; eager_dispatch.py says which is called when):
`gated_residual_ref` / `gated_residual_triton` (`stdit_engine::gated_residual`): x + gate * y.
`gated_residual_ln_modulate_ref` / `_triton` (`stdit_engine::gated_residual_ln_modulate`): (new_x,
LN(new_x) * (1 + scale) + shift) in one pass over the tokens; gate None is a plain sum x + y (the
cross-attention's residual). Its LayerNorm reads new_x as stored, rounded to x's dtype, so its
second output is what ln_modulate would compute from the first. Fused, the pair costs 4 passes
over the tokens instead of 5, and the norm runs at the residual kernel's bandwidth.
The `_fp8` variants emit that norm (`gated_residual_ln_modulate_fp8`), or the sum itself
(`gated_residual_fp8`, for the temporal qkv and the cross-attention query, which read x without a
norm), quantized for an FP8 linear.

x and y are [B, N, C], gate / shift / scale [B, C], all with any strides; the [B, C] rows are read
by sample index inside the kernel. Math in fp32; outputs contiguous, in x's dtype.
"""
from __future__ import annotations

import torch

from .fp8_quantize import E4M3_MAX, MIN_SCALE, as_e4m3, e4m3_rows, fake_e4m3_rows, quantize_tokens
from .ln_modulate import ln_modulate_ref, modulated_ln, store_norm
from .rows import row_launch_config, row_tile
from .triton_support import jit, launch, tl

# Tokens per program and warps, the fastest of sweeps of both (BENCHMARKS.md): one token and 2
# warps, for the fused kernel as for the norm alone, and for the residual without the norm (plain,
# or with its sum quantized for FP8).
FUSED_BLOCK_ROWS, FUSED_WARPS = 1, 2
RESIDUAL_BLOCK_ROWS, RESIDUAL_WARPS = 1, 2


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + gate[:, None] * y


def gated_residual_ln_modulate_ref(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                   scale: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(new_x, LN(new_x) * (1 + scale) + shift) with new_x = x + gate * y, or x + y if gate is None."""
    new_x = x + y if gate is None else gated_residual_ref(x, gate, y)
    return new_x, ln_modulate_ref(new_x, shift, scale, eps)


def gated_residual_ln_modulate_fp8_ref(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                       scale: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """(new_x, and its modulated norm as ln_modulate_fp8_ref quantizes it: e4m3, scale)."""
    new_x, h = gated_residual_ln_modulate_ref(x, gate, y, shift, scale, eps)
    return new_x, *quantize_tokens(h)


def gated_residual_fp8_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(new_x = x + gate * y, and new_x quantized per token: e4m3, scale)."""
    new_x = gated_residual_ref(x, gate, y)
    return new_x, *quantize_tokens(new_x)


@jit
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, out_ptr, shift_ptr, scale_ptr, ln_ptr, ln_scale_ptr, n_rows, N, C, eps, min_scale, fp8_max,
    sx_b, sx_n, sx_c, sg_b, sg_c, sy_b, sy_n, sy_c, ssh_b, ssh_c, ssc_b, ssc_c,
    HAS_GATE: tl.constexpr, WITH_LN: tl.constexpr, QUANTIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row, b, n, col, mask = row_tile(n_rows, N, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + b * sx_b + n * sx_n + col * sx_c, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * sy_b + n * sy_n + col * sy_c, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        y *= tl.load(gate_ptr + b * sg_b + col * sg_c, mask=mask, other=0.0).to(tl.float32)
    new_x = (x + y).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * C + col, new_x, mask=mask)
    if WITH_LN:
        shift = tl.load(shift_ptr + b * ssh_b + col * ssh_c, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * ssc_b + col * ssc_c, mask=mask, other=0.0).to(tl.float32)
        ln = modulated_ln(new_x.to(tl.float32), shift, scale, mask, C, eps)
        store_norm(ln, ln_ptr, ln_scale_ptr, row, col, mask, n_rows, C, min_scale, fp8_max, out_ptr.dtype.element_ty,
                   QUANTIZE)
    elif QUANTIZE:  # the sum itself, for the FP8 linear that reads it
        store_norm(new_x.to(tl.float32), ln_ptr, ln_scale_ptr, row, col, mask, n_rows, C, min_scale, fp8_max,
                   out_ptr.dtype.element_ty, QUANTIZE)


def _launch(x, gate, y, shift=None, scale=None, eps=0.0, quantize=False):
    """new_x, and LN-modulated new_x if shift and scale are given; with `quantize`, that second
    output (or new_x itself, without LN) in e4m3 and its row scales."""
    with_ln, has_gate = shift is not None, gate is not None
    if y.shape != x.shape:
        raise ValueError(f"y of shape {tuple(y.shape)} does not match x {tuple(x.shape)}")
    modulations = [m for m in (gate, shift, scale) if m is not None]
    cfg = row_launch_config(x, *modulations, rows=FUSED_BLOCK_ROWS if with_ln else RESIDUAL_BLOCK_ROWS,
                            warps=FUSED_WARPS if with_ln else RESIDUAL_WARPS)
    b, n, c = x.shape
    out = torch.empty((b, n, c), dtype=x.dtype, device=x.device)
    if quantize:
        ln, ln_scale = e4m3_rows((b, n, c), x.device)
    else:  # without LN the kernel never writes ln, without quantize never ln_scale
        ln = ln_scale = torch.empty_like(out) if with_ln else out
    # What the kernel never reads (no gate, no LN) is passed as x with zero strides: the pointers need a tensor.
    gate, gate_strides = (gate, gate.stride()) if has_gate else (x, (0, 0))
    shift, scale, norm_strides = (shift, scale, (*shift.stride(), *scale.stride())) if with_ln else (x, x, (0,) * 4)
    if out.numel():
        launch(_gated_residual_kernel, cfg.pop("grid"))(
            x, gate, y, out, shift, scale, ln, ln_scale, b * n, n, c, eps, MIN_SCALE, E4M3_MAX,
            *x.stride(), *gate_strides, *y.stride(), *norm_strides,
            HAS_GATE=has_gate, WITH_LN=with_ln, QUANTIZE=quantize, **cfg,
        )
    return (out, as_e4m3(ln), ln_scale) if quantize else (out, ln)


def gated_residual_direct(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _launch(x, gate, y)[0]


gated_residual_triton = torch.library.custom_op(
    "stdit_engine::gated_residual", gated_residual_direct, mutates_args=())


@gated_residual_triton.register_fake
def _(x, gate, y):
    return x.new_empty(x.shape)


def gated_residual_fp8_direct(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new_x, new_x quantized for an FP8 linear: e4m3, row scales); meaning: `gated_residual_fp8_ref`."""
    return _launch(x, gate, y, quantize=True)


gated_residual_fp8_triton = torch.library.custom_op(
    "stdit_engine::gated_residual_fp8", gated_residual_fp8_direct, mutates_args=())


@gated_residual_fp8_triton.register_fake
def _(x, gate, y):
    return x.new_empty(x.shape), *fake_e4m3_rows(x)


def gated_residual_ln_modulate_direct(
    x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(x, gate, y, shift, scale, eps)


gated_residual_ln_modulate_triton = torch.library.custom_op(
    "stdit_engine::gated_residual_ln_modulate", gated_residual_ln_modulate_direct, mutates_args=())


@gated_residual_ln_modulate_triton.register_fake
def _(x, gate, y, shift, scale, eps=1e-6):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def gated_residual_ln_modulate_fp8_direct(
    x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new_x, its norm quantized for an FP8 linear: e4m3, row scales); meaning:
    `gated_residual_ln_modulate_fp8_ref`."""
    return _launch(x, gate, y, shift, scale, eps, quantize=True)


gated_residual_ln_modulate_fp8_triton = torch.library.custom_op(
    "stdit_engine::gated_residual_ln_modulate_fp8", gated_residual_ln_modulate_fp8_direct, mutates_args=())


@gated_residual_ln_modulate_fp8_triton.register_fake
def _(x, gate, y, shift, scale, eps=1e-6):
    return x.new_empty(x.shape), *fake_e4m3_rows(x)
