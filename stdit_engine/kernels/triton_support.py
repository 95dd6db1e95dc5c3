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
    from triton import knobs
    from triton.runtime import driver
except ImportError:  # macOS, Windows: no triton wheel
    triton = tl = knobs = driver = None

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
    """`kernel[grid]`, the launch every launcher makes, through the launch cache (`launch_cached`)
    on a GPU; inside `compile_in_parallel()` on this thread, the kernel's compilation for these
    arguments instead (Triton's warmup: nothing runs, and the outputs are left unwritten)."""
    if getattr(_compiling, "active", False):
        return partial(kernel.warmup, grid=grid)
    if INTERPRETED or callable(grid) or getattr(kernel, "pre_run_hooks", None):
        return kernel[grid]  # the interpreter compiles nothing; a grid or hooks computed at launch
    return partial(launch_cached, kernel, grid)


# Triton's compiled kernels by (kernel, grid, device, launch options and constexprs, argument key).
_launchers: dict = {}
# Keys hold every integer argument's value (sizes, strides): a bound on the table, cleared when full.
MAX_CACHED_LAUNCHERS = 4096


def argument_key(value):
    """What a launch's compiled kernel depends on in one argument, at least what Triton specializes
    on: a tensor's dtype and 16-byte alignment; any other value itself, with its type (True and 1
    are equal in Python, not to Triton)."""
    if hasattr(value, "data_ptr"):
        return value.dtype, value.data_ptr() % 16 == 0
    return type(value), value


def launch_cached(kernel, grid, *args, **kwargs):
    """`kernel[grid](*args, **kwargs)`, the kernel that Triton compiled for such arguments launched
    directly after the first call. Triton's own launch binds and specializes every argument, hashes
    a key and checks the kernel's globals on every call, some tens of microseconds of host time: a
    forward without CUDA graphs makes hundreds of launches, and where the GPU waits on the host
    (the FP8 forward) that time is the forward's. Positional arguments, then keyword arguments
    naming every other parameter (else Triton's launch, every time); the key is `argument_key`'s
    per argument, so a new dtype, alignment or integer value compiles (or finds) its own kernel."""
    device = driver.active.get_current_device()
    key = (kernel, grid, device, tuple(kwargs.items()), tuple(argument_key(a) for a in args))
    compiled = _launchers.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, **kwargs)
        if all(name in kwargs for name in kernel.arg_names[len(args):]):
            if len(_launchers) >= MAX_CACHED_LAUNCHERS:
                _launchers.clear()
            _launchers[key] = compiled
        return compiled
    # As Triton's JITFunction.run ends: every parameter in signature order, constexprs included.
    params = (*args, *(kwargs[name] for name in kernel.arg_names[len(args):]))
    stream = driver.active.get_current_stream(device)
    grid_0, grid_1, grid_2 = (*grid, 1, 1)[:3]
    compiled.run(grid_0, grid_1, grid_2, stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid, stream, *params), knobs.runtime.launch_enter_hook,
                 knobs.runtime.launch_exit_hook, *params)
    return compiled


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
