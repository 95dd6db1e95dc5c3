"""Where the forward's time goes without CUDA graphs (issue 20 item 4): 16x256x256, batch 4, random
weights, triton backend; for bf16, bf16 + FP8 and fp16 + FP8, the forward launched op by op and the
same replayed from a graph, then a CPU profile of the FP8 forward (host time by op: what makes it
launch-bound). Prints one JSON object.
Usage (GPU): python benchmarks/probes/no_graphs.py"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workloads import build_stdit, cuda_time_ms, graphed_time_ms, median, stdit_inputs  # noqa: E402

PRESET, BATCH = "16x256x256", 4
VARIANTS = [("bf16", torch.bfloat16, False), ("bf16+fp8", torch.bfloat16, True), ("fp16+fp8", torch.float16, True)]


def host_ms(forward, calls: int = 10) -> float:
    """Host time to queue one forward (no synchronisation inside): what the GPU waits on when it is
    launch-bound."""
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        forward()
    queued = (time.perf_counter() - begin) / calls * 1e3
    torch.cuda.synchronize()
    return queued


def main() -> dict:
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, dtype, fp8 in VARIANTS:
        model = build_stdit(PRESET, dtype, "triton", fp8=fp8)
        x, t, y, mask = stdit_inputs(model, BATCH)
        with torch.inference_mode():
            def forward():
                return model(x, t, y, mask)
            result[name] = {"launched_ms": median(cuda_time_ms(forward, warmup=3, reps=10)),
                            "host_ms": host_ms(forward),
                            "graphed_ms": median(graphed_time_ms(forward, calls=4, reps=5))}
            if name == "bf16+fp8":
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        forward()
                    torch.cuda.synchronize()
                ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:20]
                result["fp8_host_by_op"] = [{"op": e.key, "calls_per_forward": e.count / 3,
                                             "self_cpu_ms_per_forward": e.self_cpu_time_total / 1e3 / 3} for e in ops]
        del model
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
