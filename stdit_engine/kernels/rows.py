"""What the row kernels (ln_modulate.py, gated_residual.py) share: the tile of tokens a program
owns and the launch that covers x [B, N, C] with such tiles. Modulation rows [B, C] are read by
sample index row // N inside the kernels, never expanded per token."""
from __future__ import annotations

import torch

from .triton_support import cdiv, jit, next_power_of_2, tl


@jit
def row_tile(n_rows, N, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's rows of a [B*N, C] problem: (row, sample b, token n, column, in-bounds mask).

    Rows are int64, so every offset built from them is too (B*N*C passes 2^31 at 64x512x512).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < C)[None, :]
    return rows[:, None], (rows // N)[:, None], (rows % N)[:, None], cols[None, :], mask


def row_launch_config(x: torch.Tensor, *modulations: torch.Tensor, rows: int, warps: int) -> dict:
    """Grid and block sizes for a row kernel over x [B, N, C] (`rows` tokens per program, a
    [rows, next_pow2(C)] tile); checks each modulation is [B, C]."""
    b, n, c = x.shape
    for m in modulations:
        if m.shape != (b, c):
            raise ValueError(f"modulation of shape {tuple(m.shape)} does not match x {tuple(x.shape)}: expected ({b}, {c})")
    block_c = next_power_of_2(c)
    return dict(
        grid=(cdiv(b * n, rows),),
        BLOCK_M=rows, BLOCK_C=block_c, num_warps=warps,
    )
