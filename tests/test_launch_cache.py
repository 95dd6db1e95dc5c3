"""The launch cache of kernels/triton_support.py, against a stand-in for Triton's JIT function and
compiled kernel (the real ones need a GPU: tests/test_gpu_parity.py and the kernel tests run every
launch through it there)."""
import types

import pytest
import torch

from stdit_engine.kernels import triton_support
from stdit_engine.kernels.triton_support import launch_cached


class Compiled:
    """Records what a direct launch hands Triton's compiled launcher."""

    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, "function", "metadata"

    def launch_metadata(self, grid, stream, *params):
        return ("launch metadata", grid, stream)

    def run(self, *launch):
        self.log.append(("direct", launch))


class Kernel:
    """A JIT function of three parameters (x, n, BLOCK); `kernel[grid](...)` compiles (a new Compiled
    each time, as a cache miss would) and launches."""
    arg_names = ["x", "n", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("triton", grid, args, tuple(kwargs.items())))
            return Compiled(self.log)
        return launch


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(triton_support, "_launchers", {})
    monkeypatch.setattr(triton_support, "driver", types.SimpleNamespace(active=types.SimpleNamespace(
        get_current_device=lambda: 0, get_current_stream=lambda device: f"stream of {device}")))
    monkeypatch.setattr(triton_support, "knobs", types.SimpleNamespace(runtime=types.SimpleNamespace(
        launch_enter_hook="enter", launch_exit_hook="exit")))
    return Kernel()


def test_a_repeated_launch_calls_the_compiled_kernel_with_every_parameter_in_order(kernel):
    x = torch.zeros(8)
    first = launch_cached(kernel, (3,), x, 5, BLOCK=16, num_warps=4)
    again = launch_cached(kernel, (3,), x, 5, BLOCK=16, num_warps=4)
    assert again is first
    assert kernel.log[0] == ("triton", (3,), (x, 5), (("BLOCK", 16), ("num_warps", 4)))
    kind, launch = kernel.log[1]
    assert kind == "direct"
    # grid padded to three dimensions, the stream, Triton's handles, the hooks, then x, n, BLOCK
    assert launch[:5] == (3, 1, 1, "stream of 0", "function")
    assert launch[6:9] == (("launch metadata", (3,), "stream of 0"), "enter", "exit")
    assert launch[9] is x and launch[10:] == (5, 16)


@pytest.mark.parametrize("change", ["dtype", "alignment", "integer", "bool for int", "constexpr", "grid", "option"])
def test_what_triton_specializes_on_gets_its_own_compiled_kernel(kernel, change):
    x = torch.zeros(16)
    args, kwargs, grid = [x, 1], dict(BLOCK=16, num_warps=4), (2,)
    launch_cached(kernel, grid, *args, **kwargs)
    if change == "dtype":
        args[0] = torch.zeros(16, dtype=torch.float16)
    elif change == "alignment":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "integer":
        args[1] = 2
    elif change == "bool for int":
        args[1] = True  # equal to 1 in Python; Triton compiles an i1 parameter
    elif change == "constexpr":
        kwargs["BLOCK"] = 32
    elif change == "grid":
        grid = (3,)
    else:
        kwargs["num_warps"] = 8
    launch_cached(kernel, grid, *args, **kwargs)
    assert [entry[0] for entry in kernel.log] == ["triton", "triton"]


def test_a_call_that_leaves_a_parameter_to_its_default_always_goes_through_triton(kernel):
    # The direct launch needs every parameter; a defaulted one is Triton's to fill in.
    x = torch.zeros(8)
    for _ in range(2):
        launch_cached(kernel, (1,), x, 5)
    assert [entry[0] for entry in kernel.log] == ["triton", "triton"]


def test_the_table_is_cleared_when_full(kernel, monkeypatch):
    monkeypatch.setattr(triton_support, "MAX_CACHED_LAUNCHERS", 2)
    x = torch.zeros(8)
    for n in (1, 2, 3):
        launch_cached(kernel, (1,), x, n, BLOCK=16)
    assert len(triton_support._launchers) == 1
    launch_cached(kernel, (1,), x, 3, BLOCK=16)
    assert [entry[0] for entry in kernel.log] == ["triton", "triton", "triton", "direct"]
