"""Where the time of the fastest STDiT forward goes: GPU kernel time per kind of kernel, from the
profiler (the kernels and their durations are those a graphed replay runs)."""
import re

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from workloads import build_stdit, stdit_inputs

# First match wins; names of cuBLAS / cuDNN / PyTorch / our Triton kernels on Hopper.
KINDS = [
    ("temporal attention (Triton)", r"_temporal_attention_kernel"),
    ("flash attention (Triton: cross-attention, spatial where chosen)", r"_flash_attention_kernel"),
    ("LN-modulate and gated residual (Triton)", r"_ln_modulate_kernel|_gated_residual_kernel"),
    ("attention (cuDNN / SDPA)", r"cudnn|fmha|flash|attention|sdpa"),
    ("matmul (cuBLAS)", r"gemm|nvjet|xmma|cutlass|sm90_|sm100_"),
    ("GELU", r"[Gg]elu"),
    ("copies (layout changes)", r"copy|transpose|cat"),
]
FORWARDS = 3


def kind_of(kernel_name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, kernel_name)), "other elementwise")


# fp16 (the engine's default on GPUs) has measured ~2 ms slower than bf16 at 16x256x256: this tells where.
@pytest.mark.parametrize("preset, batch, dtype", [("16x256x256", 4, torch.bfloat16), ("16x256x256", 4, torch.float16),
                                                  ("64x512x512", 2, torch.bfloat16)],
                         ids=["16x256x256-4-bf16", "16x256x256-4-fp16", "64x512x512-2-bf16"])
def test_forward_time_breakdown(benchmark, preset, batch, dtype):
    model = build_stdit(preset, dtype, "triton")
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
    per_kind: dict[str, float] = {}
    per_kernel: dict[str, float] = {}
    for event in prof.key_averages():
        device_ms = event.self_device_time_total / 1e3 / FORWARDS
        if device_ms > 0:
            kind = kind_of(event.key)
            per_kind[kind] = per_kind.get(kind, 0.0) + device_ms
            per_kernel[event.key] = device_ms
    benchmark.extra_info.update(workload=f"STDiT forward {preset} batch {batch}: kernel time by kind",
                                backend="triton", dtype=str(dtype),
                                breakdown_ms=dict(sorted(per_kind.items(), key=lambda kv: -kv[1])),
                                top_kernels_ms=dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]))
    assert per_kind, "the profiler saw no GPU kernels"
