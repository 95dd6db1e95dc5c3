"""Per-token e4m3 quantization: the input of an FP8 linear (models/fp8.py).

`quantize_rows_ref(x, gelu)` is the meaning: x [rows, K] (GELU-tanh applied first if `gelu`, the FP8
MLP's fc2 input) -> (e4m3 [rows, K], fp32 scale [rows, 1]). `quantize_rows_fp8_direct` launches the kernel
and `quantize_rows_fp8_triton` is it as the custom op `stdit_engine::quantize_rows_fp8`
(eager_dispatch.py says which is called when): one program holds a whole row in registers, so the row's
largest magnitude, the scale and the quantized row come from a single read, where plain PyTorch
takes five passes (abs, amax, divide, cast, and GELU). `quantize_tile` is the same quantization for
the row kernels that emit their output in e4m3 (the `*_fp8` ops of ln_modulate.py and
gated_residual.py); `quantize_tokens` the reference's for their meanings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .triton_support import INTERPRETED, cdiv, jit, launch, next_power_of_2, tl

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
MIN_SCALE = 1e-12  # an all-zero row gets this scale instead of a division by zero


def quantize_rows_ref(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, K] (GELU-tanh applied first if `gelu`) -> (e4m3 [rows, K], fp32 scale [rows, 1]) with
    x ~ e4m3 * scale: each row's largest magnitude maps to (about) e4m3's largest finite value, 448."""
    x = x.float()
    if gelu:
        x = F.gelu(x, approximate="tanh")
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(MIN_SCALE * E4M3_MAX) / E4M3_MAX
    # Times the reciprocal, not divided by the scale: a kernel computes the reciprocal once per row
    # and then rounds exactly as this does (a division per element would cost it IEEE divisions).
    return (x * (1.0 / scale)).to(E4M3), scale


def quantize_tokens(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h [B, N, C] -> (e4m3 [B, N, C], scale [B*N, 1]): quantize_rows_ref over its tokens."""
    values, scale = quantize_rows_ref(h.reshape(-1, h.shape[-1]))
    return values.view(h.shape), scale


# (rows per program, warps) for rows up to 2048 wide once padded to a power of two (hidden 1152) and
# for wider ones (the MLP's 4608): the fastest of benchmarks/probes/launch_sweep.py --only quantize /
# quantize_gelu (BENCHMARKS.md). The padded lanes of a whole-row tile cost no memory traffic, so
# neither splitting a row into power-of-two parts nor reading wide rows in chunks pays.
QUANTIZE_LAUNCH_NARROW = (1, 1)
QUANTIZE_LAUNCH_WIDE = (1, 4)


@jit
def quantize_tile(x, min_scale, fp8_max):
    """The rows of the fp32 tile x [M, K] (masked-off entries 0) scaled for e4m3: (x * (1 / scale),
    scale [M]), each row's largest magnitude at fp8_max, rounded exactly as quantize_rows_ref
    rounds: IEEE divisions (Triton's default one is off by up to 2 ulp, which flips values lying
    near an e4m3 rounding midpoint), one a row, and IEEE products."""
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(x), axis=1), min_scale * fp8_max), fp8_max)
    return x * tl.math.div_rn(1.0, scale)[:, None], scale


@jit
def _quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, n_rows, K, stride_row, min_scale, fp8_max,
                          GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = (tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = tl.arange(0, BLOCK_K)[None, :]
    mask = (rows < n_rows) & (cols < K)
    x = tl.load(x_ptr + rows * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:  # 0.5 x (1 + tanh(u)) = x sigmoid(2u); exp written out: tl.sigmoid fails in the interpreter
        x = x / (1.0 + tl.exp(-1.5957691216057308 * (x + 0.044715 * x * x * x)))  # 2 sqrt(2 / pi)
    x, scale = quantize_tile(x, min_scale, fp8_max)
    tl.store(out_ptr + rows * K + cols, x.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + rows, scale[:, None], mask=rows < n_rows)


def e4m3_rows(shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a kernel writes e4m3 values of `shape` and the fp32 scales of their rows (every axis but
    the last: [rows, 1]); read the values through `as_e4m3`. The interpreter's fp32 -> e4m3
    conversion drops the mantissa's carry into the exponent (126.2 becomes 64, not 128; triton
    3.x), so under it the kernels store the scaled values in fp32 and PyTorch rounds them."""
    values = torch.empty(shape, dtype=torch.float32 if INTERPRETED else E4M3, device=device)
    return values, torch.empty((math.prod(shape[:-1]), 1), dtype=torch.float32, device=device)


def fake_e4m3_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the quantizing ops return for an input like x, for their fake (meta) implementations:
    e4m3 values of x's shape and the [rows, 1] fp32 scales."""
    return x.new_empty(x.shape, dtype=E4M3), x.new_empty((math.prod(x.shape[:-1]), 1), dtype=torch.float32)


def as_e4m3(buffer: torch.Tensor) -> torch.Tensor:
    return buffer if buffer.dtype == E4M3 else buffer.to(E4M3)


def quantize_rows_fp8_direct(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_rows_fp8 takes [rows, K] with unit stride along K; got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")
    rows, k = x.shape
    out, scale = e4m3_rows((rows, k), x.device)
    if rows:
        block_k = next_power_of_2(k)
        block_m, warps = QUANTIZE_LAUNCH_NARROW if block_k <= 2048 else QUANTIZE_LAUNCH_WIDE
        launch(_quantize_rows_kernel, (cdiv(rows, block_m),))(
            x, out, scale, rows, k, x.stride(0), MIN_SCALE, E4M3_MAX, GELU=gelu, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=warps)
    return as_e4m3(out), scale


quantize_rows_fp8_triton = torch.library.custom_op(
    "stdit_engine::quantize_rows_fp8", quantize_rows_fp8_direct, mutates_args=())


@quantize_rows_fp8_triton.register_fake
def _(x, gelu=False):
    return fake_e4m3_rows(x)
