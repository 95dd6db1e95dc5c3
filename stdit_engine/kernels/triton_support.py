"""Triton where it is installed: a dependency on Linux only, so elsewhere the eager and sdpa backends
still import and run. The kernel files decorate with `jit` and read `triton` / `tl` from here; the
registry refuses the triton backend when `HAVE_TRITON` is false, so no kernel is launched without it.

Triton reads TRITON_INTERPRET when `jit` decorates a kernel, that is when a kernel file is imported:
set it before importing stdit_engine to run the kernels on the CPU.
"""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no triton wheel
    triton = tl = None

HAVE_TRITON = triton is not None


def jit(fn):
    """`triton.jit`, or the plain function where triton is missing (it is then never launched)."""
    return fn if triton is None else triton.jit(fn)
