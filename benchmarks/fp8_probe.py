"""Is an FP8 forward worth building? The matmuls are ~75% of the STDiT forward and, replayed from
CUDA graphs, the card sits at its power cap (BENCHMARKS.md), so halving their bytes and energy is
the one lever left of that size. Two answers from one GPU call, before any engine code:

1. speed: each block linear at the preset's token count, bf16 `F.linear` against
   `torch._scaled_mm` on e4m3 with row-wise scales (weights per output channel, once; activations
   per token), the matmul alone and with the activation quantization done in plain PyTorch (what a
   fused producer kernel would save), all timed from CUDA graphs; and the sum over a forward;
2. fidelity: the forward with every block linear in FP8 against the fp32 forward, beside bf16's own
   distance from it. Random weights: trained ones have outlier channels, which per-token scales
   handle worse, so this is a lower bound on the damage.

    python benchmarks/fp8_probe.py [--preset 16x256x256] [--batch 4] [--depth 28]

On the CPU it runs the fidelity part only (slowly: use --preset tiny).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from workloads import build_stdit, graphed_time_ms, median, relative_error, stdit_inputs

from stdit_engine.configs import get_preset
from stdit_engine.parallel.plan import token_grid

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [rows, K] -> (e4m3 [rows, K], fp32 scale [rows, 1]) with t ~ e4m3 * scale, each row's
    largest magnitude at e4m3's largest finite value."""
    scale = t.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / E4M3_MAX
    return (t.float() / scale).to(E4M3), scale


def fp8_linear(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """x @ W^T + b with x quantized per token and W per output channel; out in x's dtype."""
    x8, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = torch._scaled_mm(x8, weight_fp8.t(), scale_a=x_scale, scale_b=weight_scale.t(), bias=bias,
                           out_dtype=x.dtype)
    return out.view(*x.shape[:-1], weight_fp8.shape[0])


def to_fp8(model: nn.Module) -> nn.Module:
    """The block linears of `model` (an STDiT) computed in FP8, in place; the caption K/V (once per
    call) and the embedders stay in the model dtype."""
    fc1_fp8 = {}  # the fc1 + GELU op receives the weight tensor: its quantized twin, by identity
    for block in model.blocks:
        for linear in (block.attn.qkv, block.attn.proj, block.attn_temp.qkv, block.attn_temp.proj,
                       block.cross_attn.q_linear, block.cross_attn.proj, block.mlp.fc2):
            w8, w_scale = quantize_rows(linear.weight)
            linear.forward = lambda x, w8=w8, w_scale=w_scale, b=linear.bias: fp8_linear(x, w8, w_scale, b)
        fc1_fp8[id(block.mlp.fc1.weight)] = quantize_rows(block.mlp.fc1.weight)
    half_linear_gelu = model.ops.linear_gelu  # the caption projection's, which stays in the model dtype

    def linear_gelu(x, weight, bias):
        if id(weight) not in fc1_fp8:
            return half_linear_gelu(x, weight, bias)
        return F.gelu(fp8_linear(x, *fc1_fp8[id(weight)], bias), approximate="tanh")

    model.ops = dataclasses.replace(model.ops, name=model.ops.name + "+fp8", linear_gelu=linear_gelu)
    return model


def fidelity(preset: str, batch: int, depth: int | None, device: str) -> None:
    reference = build_stdit(preset, torch.float32, "eager", device)
    if depth is not None:
        reference.blocks = reference.blocks[:depth]
    inputs = stdit_inputs(reference, batch)
    backend = "triton" if device == "cuda" else "eager"
    with torch.inference_mode():
        expected = reference(*inputs)
        half = copy.deepcopy(reference).to(torch.bfloat16).set_backend(backend)
        bf16 = half(*inputs)
        fp8 = to_fp8(half)(*inputs)
    print(f"fidelity, {preset} batch {batch}, {len(reference.blocks)} blocks, random weights, {backend}: "
          f"bf16 vs fp32 {relative_error(bf16, expected):.2e}; FP8 linears vs fp32 {relative_error(fp8, expected):.2e}, "
          f"vs bf16 {relative_error(fp8, bf16):.2e}")


def speed(preset: str, batch: int) -> None:
    spec = get_preset(preset)
    cfg, (frames, positions) = spec.stdit, token_grid(spec)
    c, mlp, tokens = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio), batch * frames * positions
    # (name, in, out, calls per block)
    linears = [("qkv", c, 3 * c, 2), ("proj / q / cross proj", c, c, 4), ("fc1", c, mlp, 1), ("fc2", mlp, c, 1)]
    total = {"bf16": 0.0, "fp8 matmul": 0.0, "fp8 + quantize": 0.0}
    print(f"speed, {preset} batch {batch}: {tokens} tokens, graphed us per call (TFLOP/s)")
    for name, k, n, calls in linears:
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        w8, w_scale = quantize_rows(weight)
        x8, x_scale = quantize_rows(x)
        runs = {
            "bf16": lambda: F.linear(x, weight, bias),
            "fp8 matmul": lambda: torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.t(), bias=bias,
                                                   out_dtype=torch.bfloat16),
            "fp8 + quantize": lambda: fp8_linear(x, w8, w_scale, bias),
        }
        cells = []
        for label, run in runs.items():
            us = median(graphed_time_ms(run, calls=10)) * 1e3
            total[label] += us * calls * cfg.depth / 1e3
            cells.append(f"{label} {us:7.1f} ({2 * tokens * k * n / us / 1e6:4.0f})")
        print(f"  {name:22s} {k}->{n}: " + ", ".join(cells))
    print("  per forward (block linears, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in total.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="16x256x256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--depth", type=int, default=None, help="only the first N blocks (fidelity)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        speed(args.preset, args.batch)
    fidelity(args.preset, args.batch, args.depth, device)


if __name__ == "__main__":
    main()
