"""Each hot op alone at the shapes of the STDiT forward, ours against PyTorch's, timed from CUDA
graphs as the engine runs them, with its memory traffic (GB/s, as a fraction of the card's
measured copy bandwidth) or its tensor-core rate (TFLOP/s, as a fraction of the datasheet peak)."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from workloads import cuda_time_ms, graphed_time_ms, median, peak_tflops

from stdit_engine.configs import get_preset
from stdit_engine.configs import token_grid as frames_and_positions
from stdit_engine.kernels.registry import EAGER, SDPA, resolve_backend
from stdit_engine.kernels.gated_residual import gated_residual_ref
from stdit_engine.kernels.ln_modulate import ln_modulate_ref

DTYPE = torch.bfloat16
WORKLOADS = [("16x256x256", 4), ("64x512x512", 2)]


def token_grid(preset: str, batch: int) -> tuple[int, int, int, int, int]:
    """(batch, frames, positions, hidden, heads) of the preset's token tensor."""
    cfg = get_preset(preset).stdit
    return (batch, *frames_and_positions(get_preset(preset)), cfg.hidden_size, cfg.num_heads)


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbs() -> float:
    """What a device-to-device copy of 1 GiB reaches: the ceiling for memory-bound kernels."""
    src = torch.empty(2**29, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = median(cuda_time_ms(lambda: dst.copy_(src), warmup=3, reps=20))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def record_memory_bound(benchmark, workload: str, backend: str, ms: float, bytes_moved: int) -> None:
    gbs = bytes_moved / ms / 1e6
    benchmark.extra_info.update(workload=workload, backend=backend, dtype=str(DTYPE), kernel_us=ms * 1e3,
                                gbs=gbs, fraction_of_ceiling=gbs / copy_bandwidth_gbs())


def record_compute_bound(benchmark, workload: str, backend: str, ms: float, flops: float) -> None:
    tflops = flops / ms / 1e9
    peak = peak_tflops(torch.cuda.get_device_name())
    benchmark.extra_info.update(workload=workload, backend=backend, dtype=str(DTYPE), kernel_us=ms * 1e3,
                                tflops=tflops, mfu=tflops / peak if peak else None)


def time_op(benchmark, fn) -> float:
    with torch.inference_mode():
        ms = median(graphed_time_ms(fn, calls=20))
        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=3, iterations=1)
    return ms


def triton_ops():
    return resolve_backend("triton", "cuda")


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_ln_modulate(benchmark, preset, batch, backend):
    b, t, s, c, _ = token_grid(preset, batch)
    x = torch.randn(b, t * s, c, device="cuda", dtype=DTYPE)
    shift, scale = torch.randn(2, b, c, device="cuda", dtype=DTYPE)
    op = ln_modulate_ref if backend == "eager" else triton_ops().ln_modulate
    ms = time_op(benchmark, lambda: op(x, shift, scale, 1e-6))
    record_memory_bound(benchmark, f"ln_modulate {preset} batch {batch}", backend, ms, 2 * x.numel() * x.element_size())


@pytest.mark.parametrize("backend", ["eager", "triton", "triton fused with next LN"])
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_gated_residual(benchmark, preset, batch, backend):
    b, t, s, c, _ = token_grid(preset, batch)
    x, y = torch.randn(2, b, t * s, c, device="cuda", dtype=DTYPE)
    gate, shift, scale = torch.randn(3, b, c, device="cuda", dtype=DTYPE)
    if backend == "eager":
        fn, passes = (lambda: gated_residual_ref(x, gate, y)), 3
    elif backend == "triton":
        fn, passes = (lambda: triton_ops().gated_residual(x, gate, y)), 3
    else:
        fn, passes = (lambda: triton_ops().gated_residual_ln_modulate(x, gate, y, shift, scale, 1e-6)), 4
    ms = time_op(benchmark, fn)
    record_memory_bound(benchmark, f"gated_residual {preset} batch {batch}", backend, ms, passes * x.numel() * x.element_size())


def qkv_views(b: int, seq: int, c: int, heads: int):
    """q, k, v [b, H, seq, D] as SelfAttention hands them over: permuted views of the qkv output."""
    qkv = torch.randn(b, seq, 3 * c, device="cuda", dtype=DTYPE)
    return qkv.view(b, seq, 3, heads, c // heads).permute(2, 0, 3, 1, 4)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_temporal_attention(benchmark, preset, batch, backend):
    """As the block calls it: [B, S, H, T, D] views of the qkv projection of [B, T, S, C] tokens,
    the output in token order (each backend's own layout work included)."""
    b, t, s, c, heads = token_grid(preset, batch)
    qkv = torch.randn(b, t, s, 3 * c, device="cuda", dtype=DTYPE)
    q, k, v = qkv.view(b, t, s, 3, heads, c // heads).permute(3, 0, 2, 4, 1, 5)
    op = {"eager": EAGER, "sdpa": SDPA}.get(backend) or triton_ops()
    ms = time_op(benchmark, lambda: op.temporal_attention(q, k, v).reshape(b, t, s, c))
    # Its memory floor: read q, k, v once and write the output once.
    record_memory_bound(benchmark, f"temporal attention {preset} batch {batch}", backend, ms, 4 * q.numel() * q.element_size())


SDPA_BACKENDS = {"sdpa flash": SDPBackend.FLASH_ATTENTION, "sdpa cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION}


@pytest.mark.parametrize("backend", list(SDPA_BACKENDS))
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_spatial_attention(benchmark, preset, batch, backend):
    """PyTorch's fused kernels against each other (the registry takes cuDNN's)."""
    b, t, s, c, heads = token_grid(preset, batch)
    q, k, v = qkv_views(b * t, s, c, heads)

    def attend():
        with sdpa_kernel([SDPA_BACKENDS[backend]]):
            return F.scaled_dot_product_attention(q, k, v)

    ms = time_op(benchmark, attend)
    record_compute_bound(benchmark, f"spatial attention {preset} batch {batch}", backend, ms, 4.0 * q.numel() * s)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("caption_tokens", [120, 24])
@pytest.mark.parametrize("preset, batch", WORKLOADS)
def test_cross_attention(benchmark, preset, batch, caption_tokens, backend):
    """Over the padded 120 caption tokens, and over a typical prompt's 24 (no padded work); q, k, v
    as CrossAttention hands them in (views of its projections), the output in token order."""
    b, t, s, c, heads = token_grid(preset, batch)
    q = torch.randn(b, t * s, c, device="cuda", dtype=DTYPE).view(b, t * s, heads, c // heads).transpose(1, 2)
    kv = torch.randn(b, caption_tokens, 2, heads, c // heads, device="cuda", dtype=DTYPE)
    k, v = kv.permute(2, 0, 3, 1, 4)
    lengths = torch.full((b,), min(caption_tokens, 24), device="cuda")
    op = resolve_backend(backend, "cuda")
    ms = time_op(benchmark, lambda: op.cross_attention(q, k, v, lengths).reshape(b, t * s, c))
    workload = f"cross attention {preset} batch {batch}, {caption_tokens} caption tokens"
    # Its memory floor: read q once and write the output once (the caption's K, V are small).
    record_memory_bound(benchmark, workload, backend, ms, 2 * q.numel() * q.element_size())
