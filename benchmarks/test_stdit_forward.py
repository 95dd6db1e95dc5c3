"""STDiT forward latency per preset and backend, eager reference timed in the same run."""
import pytest
import torch
from workloads import build_stdit, cuda_time_ms, graphed_time_ms, median, peak_tflops, stdit_forward_flops, stdit_inputs

from stdit_engine.reference import REFERENCE_COMPILED_MS, REFERENCE_FORWARD_MS

# Batch 1 at 64x512x512 is one rank's share under parallel cfg: against half the batch-2 time it
# tells compute from exchange in the 2-GPU step (BENCHMARKS.md, issue 6).
WORKLOADS = [("16x256x256", 4), ("16x512x512", 4), ("64x512x512", 2), ("64x512x512", 1)]
# fp16 is the reference's precision (its figures are fp16); bf16 is what the targets are set in.
# (backend, dtype, FP8 block linears)
BACKENDS = [("eager", torch.float16, False), ("sdpa", torch.float16, False), ("eager", torch.bfloat16, False),
            ("sdpa", torch.bfloat16, False), ("triton", torch.float16, False), ("triton", torch.bfloat16, False),
            ("triton", torch.float16, True), ("triton", torch.bfloat16, True)]
DTYPE_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@pytest.mark.parametrize("backend, dtype, fp8", BACKENDS,
                         ids=[f"{b}{'+fp8' if f else ''}-{DTYPE_IDS[d]}" for b, d, f in BACKENDS])
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_stdit_forward(benchmark, preset, batch, backend, dtype, fp8):
    model = build_stdit(preset, dtype, backend, fp8=fp8)
    inputs = stdit_inputs(model, batch)
    torch.cuda.empty_cache()  # reserved memory of earlier workloads must not count here
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        times = cuda_time_ms(lambda: model(*inputs), warmup=3, reps=6 if preset == "64x512x512" else 15)
        # The engine replays its steps from CUDA graphs: the forward without launch overhead.
        graphed_ms = median(graphed_time_ms(lambda: model(*inputs), calls=1, reps=5 if preset == "64x512x512" else 10))
        benchmark.pedantic(lambda: (model(*inputs), torch.cuda.synchronize()), rounds=3, iterations=1)
    ms = median(times)
    flops = stdit_forward_flops(preset, batch)
    peak = peak_tflops(torch.cuda.get_device_name())
    benchmark.extra_info.update(
        workload=f"STDiT forward {preset} batch {batch}", dtype=str(dtype), backend=backend + (" + FP8" if fp8 else ""),
        median_ms=ms, graphed_ms=graphed_ms, tflops=flops / ms / 1e9, mfu=(flops / ms / 1e9 / peak) if peak else None,
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        reference_ms=REFERENCE_FORWARD_MS.get((preset, batch)),
        reference_compiled_ms=REFERENCE_COMPILED_MS.get((preset, batch)),
    )
    del model
    torch.cuda.empty_cache()
