"""kernels/eager_dispatch.py: in plain eager inference the triton backend launches its kernels
without the dispatcher; wherever something must see the ops (autograd, a dispatch mode,
torch.compile) it calls their custom ops; the results are the same either way. And the launchers'
own grid arithmetic agrees with Triton's (triton_support.py)."""
import threading

import pytest
import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

from stdit_engine.kernels.registry import TRITON
from stdit_engine.kernels.triton_support import cdiv, next_power_of_2
from stdit_engine.models.stdit import STDiT

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def custom_op_calls(fn) -> set[str]:
    """The stdit_engine custom ops that `fn()` runs through the dispatcher."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("stdit_engine::")}


class FuncNames(TorchDispatchMode):
    """Records the name of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def small_fp8_stdit() -> tuple[STDiT, tuple]:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = STDiT(input_size=(2, 4, 4), hidden_size=144, depth=2, num_heads=2, caption_channels=64,
                      model_max_length=12, backend="triton").to(torch.bfloat16).eval().quantize_fp8()
        x = torch.randn(2, 4, 2, 4, 4).to(torch.bfloat16)
        y = torch.randn(2, 1, 12, 64).to(torch.bfloat16)
        mask = torch.zeros(1, 12, dtype=torch.long)
        mask[:, :5] = 1
    return model, (x, torch.full((2,), 500.0, device=DEVICE), y, mask)


def test_inference_forward_skips_the_dispatcher_with_the_same_output():
    model, inputs = small_fp8_stdit()
    with torch.inference_mode():
        assert custom_op_calls(lambda: model(*inputs)) == set()
        direct = model(*inputs)
    with torch.enable_grad():  # autograd watches: every Triton op goes through its custom op
        through_ops = model(*inputs)
        assert custom_op_calls(lambda: model(*inputs)) == {
            f"stdit_engine::{op}" for op in ("ln_modulate_fp8", "gated_residual", "gated_residual_fp8",
                                             "temporal_attention", "cross_attention", "gated_residual_ln_modulate",
                                             "gated_residual_ln_modulate_fp8", "quantize_rows_fp8")}
    assert torch.equal(direct, through_ops)


def test_dispatch_modes_and_compilation_see_the_custom_op(monkeypatch):
    x = torch.randn(6, 144, device=DEVICE).to(torch.bfloat16)
    with torch.inference_mode():
        direct = TRITON.quantize_rows_fp8(x, True)
        with FuncNames() as mode:
            seen = TRITON.quantize_rows_fp8(x, True)
        assert "stdit_engine.quantize_rows_fp8.default" in mode.names
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert custom_op_calls(lambda: TRITON.quantize_rows_fp8(x, True)) == {"stdit_engine::quantize_rows_fp8"}
    for a, b in zip(direct, seen, strict=True):
        assert torch.equal(a.float(), b.float())


def overlapping_modes_in_two_threads(while_second_is_inside=lambda: None):
    """Thread A enters a dispatch mode, thread B enters one, A leaves, then (after calling
    `while_second_is_inside` in B, inside its mode) B leaves: the order that leaves torch's global
    'in a dispatch mode' flag set after both have left."""
    a_entered, b_entered, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with FuncNames():
            a_entered.set()
            b_entered.wait(10)
        a_left.set()

    def b():
        a_entered.wait(10)
        with FuncNames() as mode:
            b_entered.set()
            a_left.wait(10)
            seen["result"] = while_second_is_inside()
            seen["names"] = mode.names

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    return seen


def test_whether_a_mode_watches_is_decided_per_thread():
    """Modes entered and left by other threads change neither way how this thread calls the ops."""
    x = torch.randn(6, 144, device=DEVICE).to(torch.bfloat16)
    with torch.inference_mode():
        seen = overlapping_modes_in_two_threads(lambda: TRITON.quantize_rows_fp8(x, True))
        assert "stdit_engine.quantize_rows_fp8.default" in seen["names"]  # B's own mode saw the op
        assert custom_op_calls(lambda: TRITON.quantize_rows_fp8(x, True)) == set()  # and no mode is left


@pytest.mark.parametrize("n", [0, 1, 2, 3, 15, 16, 17, 72, 144, 1000, 1152, 4608, 2**31 + 5])
def test_launch_arithmetic_matches_triton(n):
    assert next_power_of_2(n) == triton.next_power_of_2(n)
    for d in (1, 4, 64, 1000):
        assert cdiv(n, d) == triton.cdiv(n, d)
