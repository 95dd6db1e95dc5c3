"""Modulated LayerNorm: LN(x) * (1 + scale) + shift, the adaLN-single modulation of STDiT.

x is [B, N, C] with any strides; shift and scale are per-sample [B, C] (any strides, e.g. the rows
that `unbind` takes out of [B, 6, C]) broadcast over the N tokens.

`ln_modulate_ref` is the meaning; `ln_modulate_direct` launches the kernel (math in fp32, output
contiguous, in x's dtype) and `ln_modulate_triton` is it as the torch.library custom op
`stdit_engine::ln_modulate` (eager_dispatch.py says which is called when). The `_fp8` pair emits
the same norm quantized for an FP8 linear (e4m3 and row scales, fp8_quantize.py).
`modulated_ln` and `store_norm` are the norm's Triton building blocks, which the gated residual
kernel fuses in front of the next sub-block (gated_residual.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8_quantize import E4M3_MAX, MIN_SCALE, as_e4m3, e4m3_rows, fake_e4m3_rows, quantize_tile, quantize_tokens
from .rows import row_launch_config, row_tile
from .triton_support import jit, launch, tl

# One token per program and 2 warps, the fastest of a sweep of tokens x warps (BENCHMARKS.md): the
# norm's two row reductions favour small programs.
LN_BLOCK_ROWS, LN_WARPS = 1, 2


def ln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + scale[:, None]) + shift[:, None]


def ln_modulate_fp8_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                        eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """ln_modulate's output, rounded to x's dtype as it would be stored, quantized per token."""
    return quantize_tokens(ln_modulate_ref(x, shift, scale, eps))


@jit
def modulated_ln(x, shift, scale, mask, C, eps):
    """LN over the last axis of an fp32 [BLOCK_M, BLOCK_C] tile whose masked-off entries are 0."""
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C  # biased, as F.layer_norm
    rstd = 1.0 / tl.sqrt(var + eps)
    return xc * rstd[:, None] * (1.0 + scale) + shift


@jit
def store_norm(out, out_ptr, out_scale_ptr, row, col, mask, n_rows, C, min_scale, fp8_max, x_dtype: tl.constexpr,
               QUANTIZE: tl.constexpr):
    """Stores the norm tile `out` (fp32) at out_ptr, rounded to x's dtype; with QUANTIZE, that
    rounded norm in e4m3 with its row scales at out_scale_ptr, as quantize_rows would make it."""
    if QUANTIZE:
        out, out_scale = quantize_tile(out.to(x_dtype).to(tl.float32), min_scale, fp8_max)
        tl.store(out_scale_ptr + row, out_scale[:, None], mask=row < n_rows)
    tl.store(out_ptr + row * C + col, out.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _ln_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr, out_scale_ptr, n_rows, N, C, eps, min_scale, fp8_max,
    sx_b, sx_n, sx_c, ssh_b, ssh_c, ssc_b, ssc_c,
    QUANTIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row, b, n, col, mask = row_tile(n_rows, N, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + b * sx_b + n * sx_n + col * sx_c, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * ssh_b + col * ssh_c, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b * ssc_b + col * ssc_c, mask=mask, other=0.0).to(tl.float32)
    out = modulated_ln(x, shift, scale, mask, C, eps)
    store_norm(out, out_ptr, out_scale_ptr, row, col, mask, n_rows, C, min_scale, fp8_max, x_ptr.dtype.element_ty,
               QUANTIZE)


def _launch(x, shift, scale, eps, quantize: bool):
    cfg = row_launch_config(x, shift, scale, rows=LN_BLOCK_ROWS, warps=LN_WARPS)
    b, n, c = x.shape
    if quantize:
        out, out_scale = e4m3_rows((b, n, c), x.device)
    else:
        out = out_scale = torch.empty((b, n, c), dtype=x.dtype, device=x.device)  # no scales written
    if out.numel():
        launch(_ln_modulate_kernel, cfg.pop("grid"))(
            x, shift, scale, out, out_scale, b * n, n, c, eps, MIN_SCALE, E4M3_MAX,
            *x.stride(), *shift.stride(), *scale.stride(),
            QUANTIZE=quantize, **cfg
        )
    return (as_e4m3(out), out_scale) if quantize else out


def ln_modulate_direct(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return _launch(x, shift, scale, eps, quantize=False)


ln_modulate_triton = torch.library.custom_op(
    "stdit_engine::ln_modulate", ln_modulate_direct, mutates_args=())


@ln_modulate_triton.register_fake
def _(x, shift, scale, eps=1e-6):
    return x.new_empty(x.shape)


def ln_modulate_fp8_direct(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                           eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The modulated norm quantized for an FP8 linear (meaning: `ln_modulate_fp8_ref`)."""
    return _launch(x, shift, scale, eps, quantize=True)


ln_modulate_fp8_triton = torch.library.custom_op(
    "stdit_engine::ln_modulate_fp8", ln_modulate_fp8_direct, mutates_args=())


@ln_modulate_fp8_triton.register_fake
def _(x, shift, scale, eps=1e-6):
    return fake_e4m3_rows(x)
