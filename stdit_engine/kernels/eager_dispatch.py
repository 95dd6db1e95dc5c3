"""How the triton backend calls its kernels: the launcher itself in plain eager inference, the
torch.library custom op wherever something must see the op.

Each Triton op exists twice: its launcher (`*_direct`, a Python function that allocates the outputs
and launches the kernel) and that launcher registered as a custom op (`*_triton`, with a fake
implementation), which torch.compile, export, FakeTensor tracing and opcheck need to treat it as one
opaque op. Going through the dispatcher costs a few microseconds of host time per call, and a
forward makes some 280 such calls: without CUDA graphs (cuda_graphs=False, debugging) the host
queues the forward, so that overhead is the GPU's idle time. Inside a captured graph it costs
nothing at replay, but capture pays it too.

So the Ops call the launcher directly when nothing is watching: gradients off (inference mode or
no_grad: the custom ops register no autograd formula, and the direct call must not silently differ
from them under autograd), not under torch.compile / export, and no TorchDispatchMode active in the
calling thread (fake or proxy tensors, FlopCounter, the engine's LiveTensorPeak, ...). The two paths
run the same launcher, so results are the same.

Modes are per thread, so the test reads this thread's mode stack. torch's own
`is_in_torch_dispatch_mode()` is a module global that each mode's __enter__ sets and __exit__
restores: two threads whose modes overlap leave it set after both have left (every later call in
the process would take the dispatcher) or cleared while one is still inside.
"""
from __future__ import annotations

from typing import Callable

import torch


def direct_in_eager(op: Callable, launcher: Callable) -> Callable:
    """A callable that runs `launcher` in plain eager inference and the custom op `op` otherwise."""

    def call(*args, **kwargs):
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
            return op(*args, **kwargs)
        return launcher(*args, **kwargs)

    call.__name__ = call.__qualname__ = launcher.__name__
    call.__doc__ = launcher.__doc__
    return call
