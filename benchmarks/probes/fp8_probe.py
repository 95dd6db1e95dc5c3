"""What the FP8 block linears (STDiT.quantize_fp8, models/fp8.py) cost and give, three ways:

1. speed of each block linear at the preset's token count: bf16 `F.linear`, the e4m3 `_scaled_mm`
   alone (with fp32 accumulation, and with the fast one FP8Linear uses), and the engine's
   FP8Linear (the matmul plus our per-token quantization kernel), all replayed from CUDA graphs;
2. the whole forward, bf16 against FP8, each replayed from a graph of back-to-back forwards long
   enough (FORWARD_SPAN_MS) to reach the card's power cap as sampling does, alternated so both see
   the same clocks;
3. fidelity: the distance of the bf16 and the FP8 forward (bf16 and fp16 activations) from the
   fp32 forward. Random weights: trained ones have outlier channels, which per-token scales
   handle worse, so this is a lower bound on the damage.

    python -m benchmarks.probes.fp8_probe [--preset 16x256x256] [--batch 4] [--depth 28]

On the CPU it runs the fidelity part only (slowly: use --preset tiny).
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from benchmarks.workloads import build_stdit, graphed_time_ms, median, relative_error, stdit_inputs

from stdit_engine.configs import get_preset, token_grid
from stdit_engine.kernels.fp8_quantize import E4M3, quantize_rows_fp8_triton, quantize_rows_ref
from stdit_engine.models.fp8 import FP8Linear

# A graph of back-to-back forwards this long brings the card to its power cap, as sampling does.
FORWARD_SPAN_MS = 1500


def linear_speed(preset: str, batch: int) -> None:
    spec = get_preset(preset)
    cfg, (frames, positions) = spec.stdit, token_grid(spec)
    c, mlp, tokens = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio), batch * frames * positions
    # (name, in, out, calls per block)
    linears = [("qkv", c, 3 * c, 2), ("proj / q / cross proj", c, c, 4), ("fc1", c, mlp, 1), ("fc2", mlp, c, 1)]
    total = {"bf16": 0.0, "fp8 matmul, fp32 accumulation": 0.0, "fp8 matmul": 0.0, "FP8Linear": 0.0}
    print(f"speed, {preset} batch {batch}: {tokens} tokens, graphed us per call (TFLOP/s)")
    for name, k, n, calls in linears:
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        linear = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        fp8 = FP8Linear(linear)
        fp8.quantize = quantize_rows_fp8_triton
        x8, x_scale = quantize_rows_ref(x)
        w8, w_scale = fp8.weight_bits.view(E4M3), fp8.scale_bits.view(torch.float32)
        runs = {
            "bf16": lambda: linear(x),
            "fp8 matmul, fp32 accumulation": lambda: torch._scaled_mm(
                x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=linear.bias, out_dtype=torch.bfloat16),
            "fp8 matmul": lambda: torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=linear.bias,
                                                   out_dtype=torch.bfloat16, use_fast_accum=True),
            "FP8Linear": lambda: fp8(x),
        }
        cells = []
        for label, run in runs.items():
            us = median(graphed_time_ms(run, calls=10)) * 1e3
            total[label] += us * calls * cfg.depth / 1e3
            cells.append(f"{label} {us:7.1f} ({2 * tokens * k * n / us / 1e6:4.0f})")
        print(f"  {name:22s} {k}->{n}: " + ", ".join(cells))
    print("  per forward (block linears, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in total.items()))


def forward_speed(preset: str, batch: int) -> None:
    variants = {"bf16": build_stdit(preset, torch.bfloat16, "triton"),
                "bf16 + FP8": build_stdit(preset, torch.bfloat16, "triton", fp8=True)}
    inputs = stdit_inputs(variants["bf16"], batch)
    times: dict[str, list[float]] = {label: [] for label in variants}
    with torch.inference_mode():
        forward_ms = median(graphed_time_ms(lambda: variants["bf16"](*inputs), calls=1, reps=3))
        calls = max(2, round(FORWARD_SPAN_MS / forward_ms))
        for _ in range(2):
            for label, net in variants.items():
                times[label] += graphed_time_ms(lambda net=net: net(*inputs), calls=calls, reps=3)
    print(f"forward, {preset} batch {batch}, graphs of {calls} forwards: "
          + ", ".join(f"{k} {median(v):.1f} ms" for k, v in times.items()))


def fidelity(preset: str, batch: int, depth: int | None, device: str) -> None:
    reference = build_stdit(preset, torch.float32, "eager", device)
    if depth is not None:
        reference.blocks = reference.blocks[:depth]
    inputs = stdit_inputs(reference, batch)
    backend = "triton" if device == "cuda" else "eager"

    def half_copy(dtype, fp8):  # copied from the eager fp32 model: a triton one holds ops that deepcopy refuses
        model = copy.deepcopy(reference).to(dtype).set_backend(backend)
        return model.quantize_fp8() if fp8 else model

    with torch.inference_mode():
        expected = reference(*inputs)
        errors = {f"{str(dtype)[6:]}{' + FP8' if fp8 else ''}": relative_error(half_copy(dtype, fp8)(*inputs), expected)
                  for dtype in (torch.bfloat16, torch.float16) for fp8 in (False, True)}
    print(f"fidelity vs fp32, {preset} batch {batch}, {len(reference.blocks)} blocks, random weights, {backend}: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="16x256x256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--depth", type=int, default=None, help="only the first N blocks (fidelity)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        linear_speed(args.preset, args.batch)
        forward_speed(args.preset, args.batch)
    fidelity(args.preset, args.batch, args.depth, device)


if __name__ == "__main__":
    main()
