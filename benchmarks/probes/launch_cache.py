"""Issue 20 item 4 (no graphs, no penalty): what Triton's per-launch bookkeeping costs an eager
forward, and whether the engine's launch cache (kernels/triton_support.py `launch_cached`) gives
the same outputs.

Runs the 16x256x256 batch-4 forward (random weights, triton backend) in bf16, bf16 + FP8 and
fp16 + FP8, with Triton's own launches (`kernel[grid](...)`) and with the engine's: host time to
queue a forward, launched time, and whether the outputs are bitwise identical. Prints one JSON
object. Usage (GPU): python benchmarks/probes/launch_cache.py"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from no_graphs import BATCH, PRESET, VARIANTS, host_ms, triton_launch  # noqa: E402  (this script's folder)
from workloads import build_stdit, cuda_time_ms, median, stdit_inputs  # noqa: E402

from stdit_engine.kernels import cross_attention, fp8_quantize, gated_residual, ln_modulate  # noqa: E402
from stdit_engine.kernels import temporal_attention, triton_support  # noqa: E402

LAUNCHING_MODULES = (cross_attention, fp8_quantize, gated_residual, ln_modulate, temporal_attention)


def use_launcher(launch) -> None:
    for module in LAUNCHING_MODULES:
        module.launch = launch


def main() -> dict:
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, dtype, fp8 in VARIANTS:
        model = build_stdit(PRESET, dtype, "triton", fp8=fp8)
        x, t, y, mask = stdit_inputs(model, BATCH)
        with torch.inference_mode():
            def forward():
                return model(x, t, y, mask)
            use_launcher(triton_launch)
            expected = forward().clone()
            repeatable = torch.equal(forward(), expected)  # the baseline for "identical"
            plain = {"host_ms": host_ms(forward), "launched_ms": median(cuda_time_ms(forward, warmup=2, reps=10))}
            use_launcher(triton_support.launch)
            forward()  # fills the cache
            out = forward()
            cached = {"host_ms": host_ms(forward), "launched_ms": median(cuda_time_ms(forward, warmup=2, reps=10))}
        result[name] = {"triton_launch": plain, "launch_cache": cached, "repeatable": repeatable,
                        "identical": torch.equal(out, expected),
                        "compiled_kernels": len(triton_support._launchers)}
        del model, forward
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
