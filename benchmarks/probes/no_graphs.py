"""Where the forward's time goes without CUDA graphs (issue 20 item 4): 16x256x256, batch 4, random
weights, triton backend; for bf16, bf16 + FP8 and fp16 + FP8, the forward launched op by op and the
same replayed from a graph, then a CPU profile of each forward (host time by op: what makes it
launch-bound); for bf16 the host time again with the MLP's GELU out of the matmul epilogue (a
diagnostic: it changes the rounding); and the host time of single calls of the library matmuls the
forwards make (per dtype: a slow host path in one dtype shows there) and of our Triton ops,
launched directly and through their custom ops (kernels/eager_dispatch.py). Prints one JSON object.
Usage (GPU): python benchmarks/probes/no_graphs.py"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workloads import build_stdit, cuda_time_ms, graphed_time_ms, median, stdit_inputs  # noqa: E402

from stdit_engine.configs import get_preset, token_grid  # noqa: E402
from stdit_engine.kernels import fp8_quantize, gated_residual  # noqa: E402
from stdit_engine.kernels.linear_gelu import linear_gelu_ref  # noqa: E402
from stdit_engine.kernels.triton_support import cdiv, next_power_of_2  # noqa: E402

PRESET, BATCH = "16x256x256", 4
VARIANTS = [("bf16", torch.bfloat16, False), ("bf16+fp8", torch.bfloat16, True), ("fp16+fp8", torch.float16, True)]
TOP_OPS = 15


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


def host_us(call, calls: int = 50) -> float:
    """Host microseconds to queue one call, after a warm-up call."""
    call()
    return host_ms(call, calls) * 1e3


def host_by_op(forward, forwards: int = 2) -> list[dict]:
    """The ops of `forward` by host (self CPU) time, costliest first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            forward()
        torch.cuda.synchronize()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:TOP_OPS]
    return [{"op": e.key, "calls_per_forward": e.count / forwards,
             "self_cpu_ms_per_forward": round(e.self_cpu_time_total / 1e3 / forwards, 3)} for e in ops]


def library_calls(tokens: int, hidden: int, mlp: int, caption_rows: int, caption_channels: int) -> dict:
    """Host us per call of the matmuls of the forwards, in bf16 and fp16: the FP8 linear's
    `_scaled_mm` (as FP8Linear calls it), the GELU-epilogue linear (fc1 of the bf16 MLP, and the
    caption projection) and a plain linear with bias."""
    result = {}
    e4m3 = torch.float8_e4m3fn
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
        x8, x_scale = x.to(e4m3), torch.ones(tokens, 1, device="cuda")
        for n in (hidden, mlp):
            w8 = torch.randn(n, hidden, device="cuda").to(e4m3)
            w_scale, bias = torch.ones(1, n, device="cuda"), torch.randn(n, device="cuda", dtype=dtype)
            result[f"_scaled_mm {tokens}x{hidden}x{n} -> {name}"] = host_us(lambda: torch._scaled_mm(
                x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=dtype, use_fast_accum=True))
        # Which part of the FP8 linear's configuration a slow host path needs: no bias, fp32 accumulation.
        result[f"_scaled_mm {tokens}x{hidden}x{mlp} -> {name}, no bias"] = host_us(lambda: torch._scaled_mm(
            x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=dtype, use_fast_accum=True))
        result[f"_scaled_mm {tokens}x{hidden}x{mlp} -> {name}, fp32 accumulation"] = host_us(lambda: torch._scaled_mm(
            x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=dtype, use_fast_accum=False))
        for rows, k, n in ((tokens, hidden, mlp), (caption_rows, caption_channels, hidden)):
            a = torch.randn(rows, k, device="cuda", dtype=dtype)
            w, bias = torch.randn(n, k, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
            result[f"_addmm_activation gelu {rows}x{k}x{n} {name}"] = host_us(
                lambda: torch._addmm_activation(bias, a, w.t(), use_gelu=True))
            result[f"linear {rows}x{k}x{n} {name}"] = host_us(lambda: torch.nn.functional.linear(a, w, bias))
    return {k: round(v, 1) for k, v in result.items()}


def triton_calls(batch: int, tokens: int, hidden: int) -> dict:
    """Host us per call of two of our ops at the forward's shapes, in bf16 and fp16, launched directly
    (as the eager forward does) and through the custom op; and the quantize kernel launched bare
    (outputs allocated once), as its launcher launches it: Triton's own share."""
    result = {}
    block_m, warps = fp8_quantize.QUANTIZE_LAUNCH_NARROW
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        x = torch.randn(batch, tokens, hidden, device="cuda", dtype=dtype)
        gate = torch.randn(batch, hidden, device="cuda", dtype=dtype)
        rows = x.view(-1, hidden)
        calls = {"quantize_rows_fp8": (fp8_quantize.quantize_rows_fp8_direct, fp8_quantize.quantize_rows_fp8_triton,
                                       (rows, False)),
                 "gated_residual_fp8": (gated_residual.gated_residual_fp8_direct,
                                        gated_residual.gated_residual_fp8_triton, (x, gate, x))}
        for op_name, (direct, op, args) in calls.items():
            result[f"{op_name} {name} direct"] = round(host_us(lambda: direct(*args)), 1)
            result[f"{op_name} {name} custom op"] = round(host_us(lambda: op(*args)), 1)
        out, scale = fp8_quantize.e4m3_rows(rows.shape, rows.device)
        result[f"quantize_rows_fp8 {name} kernel[grid] alone"] = round(host_us(
            lambda: fp8_quantize._quantize_rows_kernel[(cdiv(rows.shape[0], block_m),)](
                rows, out, scale, rows.shape[0], hidden, rows.stride(0), fp8_quantize.MIN_SCALE,
                fp8_quantize.E4M3_MAX, GELU=False, BLOCK_M=block_m, BLOCK_K=next_power_of_2(hidden),
                num_warps=warps)), 1)
    return result


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
                            "graphed_ms": median(graphed_time_ms(forward, calls=4, reps=5)),
                            "host_by_op": host_by_op(forward)}
            if not fp8:  # what the GELU epilogue's linears cost the host: the same forward with them unfused
                model.ops = dataclasses.replace(model.ops, linear_gelu=linear_gelu_ref)
                forward()
                result[name]["host_ms_gelu_unfused"] = host_ms(forward)
        del model
        torch.cuda.empty_cache()
    cfg = get_preset(PRESET).stdit
    frames, positions = token_grid(get_preset(PRESET))
    with torch.inference_mode():
        result["library_host_us"] = library_calls(BATCH * frames * positions, cfg.hidden_size,
                                                  int(cfg.hidden_size * cfg.mlp_ratio), BATCH * cfg.model_max_length,
                                                  cfg.caption_channels)
        result["triton_host_us"] = triton_calls(BATCH, frames * positions, cfg.hidden_size)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
