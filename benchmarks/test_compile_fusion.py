"""Issue 3's other route to the fusions our kernels do not make (the gated residual in the
attention projections' epilogue): torch.compile around our ops. The triton backend as the engine
runs it, against the same model under torch.compile with max-autotune, the spatial and temporal
gated residuals left as plain PyTorch so that Inductor may fuse them into a Triton matmul's
epilogue; our other ops (the MLP residual among them, fused into the next norm) stay opaque custom
ops. Both timed from CUDA graphs in the same process, with the compile time beside (results:
BENCHMARKS.md)."""
import dataclasses
import time

import pytest
import torch
from workloads import build_stdit, graphed_time_ms, median, relative_error, stdit_inputs

from stdit_engine.kernels.gated_residual import gated_residual_ref

VARIANTS = ["triton", "triton + torch.compile (max-autotune), gated residual to Inductor"]


@pytest.mark.parametrize("variant", VARIANTS, ids=["triton", "compiled"])
@pytest.mark.parametrize("preset, batch", [("16x256x256", 4)])
def test_compile_fusion(benchmark, preset, batch, variant):
    model = build_stdit(preset, torch.bfloat16, "triton")
    inputs = stdit_inputs(model, batch)
    compile_s = None
    with torch.inference_mode():
        expected = model(*inputs)
        forward = model
        if variant != "triton":
            model.ops = dataclasses.replace(model.ops, name="triton-compiled", gated_residual=gated_residual_ref)
            forward = torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False)
            start = time.perf_counter()
            out = forward(*inputs)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            error = relative_error(out, expected)
            assert error < 1e-2, f"compiled forward off the eager-mode triton forward by {error:.2e}"
        ms = median(graphed_time_ms(lambda: forward(*inputs), calls=1, reps=10))
        benchmark.pedantic(lambda: (forward(*inputs), torch.cuda.synchronize()), rounds=3, iterations=1)
    benchmark.extra_info.update(workload=f"STDiT forward {preset} batch {batch}", backend=variant,
                                dtype=str(torch.bfloat16), forward_ms=ms, compile_s=compile_s)
