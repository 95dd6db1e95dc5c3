"""What the benchmark suites run, and the arithmetic to judge them by (the reference's figures:
stdit_engine/reference.py)."""
from __future__ import annotations

import re
import statistics

import torch

from stdit_engine.configs import get_preset, token_grid
from stdit_engine.models.stdit import STDiT
from stdit_engine.quality.metrics import relative_l2

# Dense fp16/bf16 tensor-core peak of the card's datasheet, for model FLOP utilisation.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}


# First match wins; names of NCCL / cuBLAS / cuDNN / PyTorch / our Triton kernels on Hopper.
KERNEL_KINDS = [
    ("NCCL (exchange between ranks)", r"nccl"),  # ncclDevKernel_*, ncclKernel_*
    ("temporal attention (Triton)", r"_temporal_attention_kernel"),
    ("flash attention (Triton: cross-attention, spatial where chosen)", r"_flash_attention_kernel"),
    ("LN-modulate and gated residual (Triton)", r"_ln_modulate_kernel|_gated_residual_kernel"),
    ("FP8 quantization (Triton)", r"_quantize_rows_kernel"),
    ("attention (cuDNN / SDPA)", r"cudnn|fmha|flash|attention|sdpa"),
    ("matmul (cuBLAS)", r"gemm|nvjet|xmma|cutlass|sm90_|sm100_"),
    ("GELU", r"[Gg]elu"),
    ("copies (layout changes)", r"copy|transpose|cat"),
]


def kind_of(kernel_name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, kernel_name)), "other elementwise")


def kernel_time_ms(prof, per: int = 1) -> tuple[dict[str, float], dict[str, tuple[float, int]]]:
    """GPU kernel time of a torch.profiler run divided by `per` (forwards, steps): ms by kind, costliest
    first, and (ms, calls) by kernel name."""
    by_kind: dict[str, float] = {}
    by_kernel: dict[str, tuple[float, int]] = {}
    for event in prof.key_averages():
        device_ms = event.self_device_time_total / 1e3 / per
        if device_ms > 0:
            kind = kind_of(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + device_ms
            by_kernel[event.key] = (device_ms, event.count)
    return dict(sorted(by_kind.items(), key=lambda kv: -kv[1])), by_kernel


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def stdit_forward_flops(preset_name: str, batch: int) -> float:
    """FLOPs of one STDiT forward (multiply-add = 2): the linears and the three attentions."""
    preset = get_preset(preset_name)
    cfg = preset.stdit
    frames, positions = token_grid(preset)
    c, caption = cfg.hidden_size, cfg.model_max_length
    mlp = int(c * cfg.mlp_ratio)
    # qkv+proj twice (spatial, temporal), cross q+proj, fc1+fc2: multiply-adds per token.
    linear_macs = 2 * (3 * c * c + c * c) + 2 * c * c + 2 * c * mlp
    attention_macs = 2 * c * (positions + frames + caption)  # QK^T and PV over each sequence
    return 2.0 * batch * frames * positions * cfg.depth * (linear_macs + attention_macs)


def build_stdit(preset_name: str, dtype: torch.dtype, backend: str, device: str = "cuda", fp8: bool = False) -> STDiT:
    with torch.device(device):
        model = STDiT(**get_preset(preset_name).stdit.to_kwargs(), backend=backend).to(dtype).eval()
    return model.quantize_fp8() if fp8 else model


def stdit_inputs(model: STDiT, batch: int, generator_seed: int = 0):
    device, dtype = model.pos_embed.device, model.dtype
    g = torch.Generator(device).manual_seed(generator_seed)
    x = torch.randn(batch, model.in_channels, *model.input_size, device=device, dtype=dtype, generator=g)
    t = torch.full((batch,), 500.0, device=device)
    y = torch.randn(batch, 1, model.model_max_length, model.caption_channels, device=device, dtype=dtype, generator=g)
    # The mask of the conditional rows; a batch of 1 is one rank's half under parallel cfg.
    mask = torch.zeros(max(1, batch // 2), model.model_max_length, dtype=torch.long, device=device)
    mask[:, :20] = 1  # a typical prompt's length in T5 tokens
    return x, t, y, mask


def cuda_time_ms(fn, warmup: int = 3, reps: int = 10) -> list[float]:
    """Per-call times from CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def graphed_time_ms(fn, calls: int = 10, reps: int = 10) -> list[float]:
    """Per-call GPU times of `fn` replayed from a CUDA graph of `calls` back-to-back calls, as the
    engine replays its steps: no Python or launch overhead (which hides small kernels otherwise)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return [ms / calls for ms in cuda_time_ms(graph.replay, warmup=2, reps=reps)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, out read in ref's shape."""
    return relative_l2(out.reshape(ref.shape), ref)
