"""Where the time of the fastest STDiT forward goes: GPU kernel time per kind of kernel, from the
profiler (the kernels and their durations are those a graphed replay runs)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from workloads import build_stdit, kernel_time_ms, stdit_inputs

FORWARDS = 3


# Where fp16 (the engine's default on GPUs) and bf16 differ in a forward, and where the FP8
# forward's time goes. (preset, batch, dtype, FP8 block linears)
CASES = [("16x256x256", 4, torch.bfloat16, False), ("16x256x256", 4, torch.float16, False),
         ("16x256x256", 4, torch.bfloat16, True), ("64x512x512", 2, torch.bfloat16, False),
         ("64x512x512", 2, torch.bfloat16, True)]


@pytest.mark.parametrize("preset, batch, dtype, fp8", CASES,
                         ids=[f"{p}-{b}-{str(d)[6:]}{'-fp8' if f else ''}" for p, b, d, f in CASES])
def test_forward_time_breakdown(benchmark, preset, batch, dtype, fp8):
    model = build_stdit(preset, dtype, "triton", fp8=fp8)
    inputs = stdit_inputs(model, batch)
    with torch.inference_mode():
        for _ in range(2):
            model(*inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(FORWARDS):
                model(*inputs)
            torch.cuda.synchronize()
        benchmark.pedantic(lambda: (model(*inputs), torch.cuda.synchronize()), rounds=1, iterations=1)
    per_kind, per_kernel = kernel_time_ms(prof, per=FORWARDS)
    benchmark.extra_info.update(workload=f"STDiT forward {preset} batch {batch}: kernel time by kind",
                                backend="triton" + (" + FP8" if fp8 else ""), dtype=str(dtype), breakdown_ms=per_kind,
                                top_kernels_ms={name: ms for name, (ms, _) in
                                                sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]})
    assert per_kind, "the profiler saw no GPU kernels"
