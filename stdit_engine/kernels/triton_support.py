"""Triton where it is installed: a dependency on Linux only, so elsewhere the eager and sdpa backends
still import and run. The kernel files decorate with `jit` and read `triton` / `tl` from here; the
registry refuses the triton backend when `HAVE_TRITON` is false, so no kernel is launched without it.

Triton reads TRITON_INTERPRET when `jit` decorates a kernel, that is when a kernel file is imported:
set it before importing stdit_engine to run the kernels on the CPU.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no triton wheel
    triton = tl = None

HAVE_TRITON = triton is not None
# Whether the kernels run under Triton's interpreter: decided, as Triton decides it, once at import.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def jit(fn):
    """`triton.jit`, or the plain function where triton is missing (it is then never launched)."""
    return fn if triton is None else triton.jit(fn)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b), as triton.cdiv: the launchers' grids. Triton's own is a constexpr function, whose
    call costs microseconds of host time on every launch."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of two >= n (n itself for 0 and 1), as triton.next_power_of_2: block sizes."""
    return n if n <= 1 else 1 << (n - 1).bit_length()


_compiling = threading.local()  # this thread's launches only compile (inside `compile_in_parallel`)


def launch(kernel, grid):
    """`kernel[grid]`, the launch every launcher makes; inside `compile_in_parallel()` on this thread,
    the kernel's compilation for these arguments instead (Triton's warmup: nothing runs, and the
    outputs are left unwritten)."""
    if getattr(_compiling, "active", False):
        return partial(kernel.warmup, grid=grid)
    return kernel[grid]


@contextmanager
def compile_in_parallel():
    """Inside, this thread's launches submit their kernels' compilations to a pool of threads
    (Triton's AsyncCompileMode) instead of compiling each at its first launch, one after another;
    on leaving, all have compiled and sit in Triton's caches. For a process's first call, where
    compiling the kernels one by one is most of what it pays (Triton releases the GIL while it compiles)."""
    if triton is None:
        yield
        return
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, triton.AsyncCompileMode(pool):
        _compiling.active = True
        try:
            yield
        finally:
            _compiling.active = False
