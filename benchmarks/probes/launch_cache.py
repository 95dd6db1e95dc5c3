"""An experiment for issue 20 item 4 (no graphs, no penalty): what Triton's per-launch bookkeeping
costs an eager forward, and whether a launch cache gives the same outputs.

Every launch through `kernel[grid](...)` runs Triton's JITFunction.run: it binds and specializes
the arguments, builds the cache key, looks the compiled kernel up, checks the globals, and only
then calls the compiled kernel's launcher. The cache here keeps, per kernel, grid, device and
argument key, the compiled kernel that the first `kernel[grid](...)` returned, and later calls its
launcher directly with the arguments in signature order, as JITFunction.run ends. The argument key
holds at least what Triton specializes on: each tensor's dtype and 16-byte alignment, every other
argument by value (ints are specialized on their value), the constexprs and launch options.

Runs the 16x256x256 batch-4 forward (random weights, triton backend) in bf16, bf16 + FP8 and
fp16 + FP8, with Triton's launches and with the cache: host time to queue a forward, launched
time, and whether the outputs are bitwise identical. Prints one JSON object. Kept out of the
engine until a GPU run shows both; a separate process from no_graphs.py, so a failure here costs
nothing there.
Usage (GPU): python benchmarks/probes/launch_cache.py"""
import json
import sys
from pathlib import Path

import torch
from triton import knobs
from triton.runtime import driver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from no_graphs import BATCH, PRESET, VARIANTS, host_ms  # noqa: E402  (this script's folder)
from workloads import build_stdit, cuda_time_ms, median, stdit_inputs  # noqa: E402

from stdit_engine.kernels import cross_attention, fp8_quantize, gated_residual, ln_modulate  # noqa: E402
from stdit_engine.kernels import temporal_attention, triton_support  # noqa: E402

LAUNCHING_MODULES = (cross_attention, fp8_quantize, gated_residual, ln_modulate, temporal_attention)


def argument_key(value):
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    return value


class LaunchCache:
    def __init__(self):
        self.compiled = {}
        self.hits = 0

    def launch(self, kernel, grid):
        def run(*args, **kwargs):
            device = torch.cuda.current_device()
            key = (id(kernel), grid, device, tuple(kwargs.items()), tuple(argument_key(a) for a in args))
            compiled = self.compiled.get(key)
            if compiled is None:
                compiled = self.compiled[key] = kernel[grid](*args, **kwargs)
                return compiled
            self.hits += 1
            stream = driver.active.get_current_stream(device)
            params = (*args, *(kwargs[name] for name in kernel.arg_names[len(args):]))
            g0, g1, g2 = (*grid, 1, 1)[:3]
            compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata,
                         compiled.launch_metadata(grid, stream, *params), knobs.runtime.launch_enter_hook,
                         knobs.runtime.launch_exit_hook, *params)
            return compiled
        return run


def use_launcher(launch) -> None:
    for module in LAUNCHING_MODULES:
        module.launch = launch


def main() -> dict:
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, dtype, fp8 in VARIANTS:
        model = build_stdit(PRESET, dtype, "triton", fp8=fp8)
        x, t, y, mask = stdit_inputs(model, BATCH)
        cache = LaunchCache()
        with torch.inference_mode():
            def forward():
                return model(x, t, y, mask)
            use_launcher(triton_support.launch)
            expected = forward().clone()
            repeatable = torch.equal(forward(), expected)  # the baseline for "identical"
            plain = {"host_ms": host_ms(forward), "launched_ms": median(cuda_time_ms(forward, warmup=2, reps=10))}
            use_launcher(cache.launch)
            forward()  # fills the cache
            out = forward()
            cached = {"host_ms": host_ms(forward), "launched_ms": median(cuda_time_ms(forward, warmup=2, reps=10))}
            use_launcher(triton_support.launch)
        result[name] = {"triton_launch": plain, "launch_cache": cached, "repeatable": repeatable,
                        "identical": torch.equal(out, expected),
                        "compiled_kernels": len(cache.compiled), "cache_hits": cache.hits}
        del model, forward
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
