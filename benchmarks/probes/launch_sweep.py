"""Times our Triton kernels over their launch constants at the STDiT forward's shapes, on this GPU,
and prints each configuration's time and its error against the backend's reference op; the module
constants (the kernels' defaults) are the winners of a sweep on the card BENCHMARKS.md names. Run it
on a new card before trusting those defaults there:

    python -m benchmarks.probes.launch_sweep [--only temporal|cross|ln|residual_ln|residual|residual_fp8|quantize|quantize_gelu]
"""
from __future__ import annotations

import argparse
import itertools

import torch
from benchmarks.workloads import graphed_time_ms, median, relative_error

from stdit_engine.kernels import cross_attention, fp8_quantize, gated_residual, ln_modulate, temporal_attention
from stdit_engine.kernels.cross_attention import cross_attention_sdpa
from stdit_engine.kernels.fp8_quantize import quantize_rows_ref
from stdit_engine.kernels.gated_residual import gated_residual_fp8_ref, gated_residual_ln_modulate_ref, gated_residual_ref
from stdit_engine.kernels.ln_modulate import ln_modulate_ref
from stdit_engine.kernels.temporal_attention import temporal_attention_sdpa

DTYPE = torch.bfloat16
HIDDEN, HEADS = 1152, 16
# (name, samples, frames, spatial positions): the guidance batch of 16x256x256 (2 prompts) and of
# 64x512x512 (1 prompt).
SHAPES = [("16x256x256 batch 4", 4, 16, 256), ("64x512x512 batch 2", 2, 64, 1024)]


def tokens(b: int, t: int, s: int, width: int) -> torch.Tensor:
    return torch.randn(b, t, s, width, device="cuda", dtype=DTYPE)


def temporal_case(b, t, s):
    qkv = tokens(b, t, s, 3 * HIDDEN).view(b, t, s, 3, HEADS, HIDDEN // HEADS).permute(3, 0, 2, 4, 1, 5)
    return (lambda: temporal_attention.temporal_attention_triton(*qkv)), (lambda: temporal_attention_sdpa(*qkv))


def cross_case(b, t, s, caption_tokens=120, used=24):
    q = tokens(b, t, s, HIDDEN).view(b, t * s, HEADS, HIDDEN // HEADS).transpose(1, 2)
    k, v = torch.randn(b, caption_tokens, 2, HEADS, HIDDEN // HEADS, device="cuda", dtype=DTYPE).permute(2, 0, 3, 1, 4)
    lengths = torch.full((b,), used, device="cuda")
    return (lambda: cross_attention.cross_attention_triton(q, k, v, lengths)), \
        (lambda: cross_attention_sdpa(q, k, v, lengths))


def ln_case(b, t, s):
    x = tokens(b, t, s, HIDDEN).view(b, t * s, HIDDEN)
    shift, scale = torch.randn(2, b, HIDDEN, device="cuda", dtype=DTYPE)
    return (lambda: ln_modulate.ln_modulate_triton(x, shift, scale, 1e-6)), \
        (lambda: ln_modulate_ref(x, shift, scale, 1e-6))


def residual_ln_case(b, t, s):
    """The fused residual + norm, judged on the norm (the output that depends on the launch)."""
    x, y = (tokens(b, t, s, HIDDEN).view(b, t * s, HIDDEN) for _ in range(2))
    gate, shift, scale = torch.randn(3, b, HIDDEN, device="cuda", dtype=DTYPE)
    return (lambda: gated_residual.gated_residual_ln_modulate_triton(x, gate, y, shift, scale, 1e-6)[1]), \
        (lambda: gated_residual_ln_modulate_ref(x, gate, y, shift, scale, 1e-6)[1])


def residual_case(b, t, s):
    x, y = (tokens(b, t, s, HIDDEN).view(b, t * s, HIDDEN) for _ in range(2))
    gate = torch.randn(b, HIDDEN, device="cuda", dtype=DTYPE)
    return (lambda: gated_residual.gated_residual_triton(x, gate, y)), (lambda: gated_residual_ref(x, gate, y))


def residual_fp8_case(b, t, s):
    """The residual emitting its sum quantized too, judged on the dequantized sum."""
    x, y = (tokens(b, t, s, HIDDEN).view(b, t * s, HIDDEN) for _ in range(2))
    gate = torch.randn(b, HIDDEN, device="cuda", dtype=DTYPE)
    return (lambda: gated_residual.gated_residual_fp8_triton(x, gate, y)[1:]), \
        (lambda: gated_residual_fp8_ref(x, gate, y)[1:]), lambda rows: dequantized((rows[0].flatten(0, 1), rows[1]))


def dequantized(rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    values, scale = rows
    return values.float() * scale


def quantize_case(b, t, s, width=HIDDEN, gelu=False):
    """The FP8 input quantization, timed alone and judged on the dequantized rows."""
    x = tokens(b, t, s, width).view(b * t * s, width)
    return (lambda: fp8_quantize.quantize_rows_fp8_triton(x, gelu)), (lambda: quantize_rows_ref(x, gelu)), \
        dequantized


# kernel: (module, {constant: values}, case)
SWEEPS = {
    "temporal": (temporal_attention, {"WARPS_BY_TILE": [dict.fromkeys((16, 32, 64), w) for w in (1, 2, 4, 8)]}, temporal_case),
    "cross": (cross_attention, {"BLOCK_N": [64, 128], "BLOCK_L": [16, 32], "NUM_WARPS": [4, 8]}, cross_case),
    "ln": (ln_modulate, {"LN_BLOCK_ROWS": [1, 2, 4], "LN_WARPS": [1, 2, 4, 8]}, ln_case),
    "residual_ln": (gated_residual, {"FUSED_BLOCK_ROWS": [1, 2, 4, 8], "FUSED_WARPS": [2, 4, 8]}, residual_ln_case),
    "residual": (gated_residual, {"RESIDUAL_BLOCK_ROWS": [1, 2, 4], "RESIDUAL_WARPS": [1, 2, 4, 8]},
                 residual_case),
    "residual_fp8": (gated_residual, {"RESIDUAL_BLOCK_ROWS": [1, 2, 4], "RESIDUAL_WARPS": [1, 2, 4, 8]},
                     residual_fp8_case),
    "quantize": (fp8_quantize, {"QUANTIZE_LAUNCH_NARROW": list(itertools.product((1, 2, 4, 8), (1, 2, 4, 8)))},
                 quantize_case),
    "quantize_gelu": (fp8_quantize, {"QUANTIZE_LAUNCH_WIDE": list(itertools.product((1, 2), (2, 4, 8, 16)))},
                      lambda b, t, s: quantize_case(b, t, s, width=4 * HIDDEN, gelu=True)),
}


def sweep(name: str) -> None:
    module, space, make_case = SWEEPS[name]
    defaults = {k: getattr(module, k) for k in space}
    try:
        for label, *shape in SHAPES:
            # A case is (run, reference) or (run, reference, readout): the readout turns an output
            # into the tensor compared, outside the timed call.
            run, reference, *readout = make_case(*shape)
            comparable = readout[0] if readout else (lambda out: out)
            with torch.inference_mode():
                expected = comparable(reference())
                print(f"{name}, {label}: reference {median(graphed_time_ms(reference, calls=20)) * 1e3:.1f} us")
                for values in itertools.product(*space.values()):
                    config = dict(zip(space, values))
                    for key, value in config.items():
                        setattr(module, key, value)
                    try:
                        error = relative_error(comparable(run()), expected)
                    except ValueError as refused:  # a combination the launcher refuses
                        print(f"  {config}: refused ({refused})")
                        continue
                    us = median(graphed_time_ms(run, calls=20)) * 1e3
                    mark = "  (default)" if config == defaults else ""
                    print(f"  {config}: {us:8.1f} us, relative error {error:.1e}{mark}", flush=True)
    finally:
        for key, value in defaults.items():
            setattr(module, key, value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SWEEPS), action="append")
    for kernel in parser.parse_args().only or list(SWEEPS):
        sweep(kernel)
