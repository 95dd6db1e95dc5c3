"""Launches inside `compile_in_parallel()` only compile their kernel (on the thread that entered it);
everywhere else they run. (The compilation itself needs a GPU: the first capture of a step uses it.)"""
import threading

from stdit_engine.kernels.triton_support import compile_in_parallel, launch


class FakeKernel:
    """Records what a launcher asks of a Triton kernel: a launch (kernel[grid](...)) or a warmup."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(("run", grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        self.calls.append(("compile", grid, args, kwargs))


def test_launches_compile_only_inside_the_region_and_only_on_its_thread():
    kernel = FakeKernel()
    launch(kernel, (4,))(1, 2, BLOCK=16)
    with compile_in_parallel():
        launch(kernel, (8,))(3, BLOCK=32)
        other = threading.Thread(target=lambda: launch(kernel, (2,))(5))
        other.start()
        other.join(timeout=30)
    launch(kernel, (4,))(6)
    assert kernel.calls == [("run", (4,), (1, 2), {"BLOCK": 16}), ("compile", (8,), (3,), {"BLOCK": 32}),
                            ("run", (2,), (5,), {}), ("run", (4,), (6,), {})]


def test_the_region_ends_on_an_error_and_launches_run_again():
    kernel = FakeKernel()
    try:
        with compile_in_parallel():
            raise ValueError("a launcher failed")
    except ValueError:
        pass
    launch(kernel, (1,))()
    assert kernel.calls == [("run", (1,), (), {})]
